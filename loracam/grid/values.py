"""A1111 X/Y/Z plot value lists: a CSV line of values and int or float ranges (interop.md §9).

Forms, as A1111 reads them:
  ``1, 3, 5``          the values themselves (quote a value that contains a comma: ``"a, b", c``)
  ``1-5``              every number from 1 to 5 (a float range steps by 1 too: ``5-9`` -> 5,6,7,8,9)
  ``1-5 (+2)``         from 1 to 5 in steps of 2 -> 1,3,5; ``10-1 (-3)`` -> 10,7,4,1
  ``1-10 [5]``         5 evenly spaced values from 1 to 10

Counted int ranges reproduce A1111 exactly: it takes ``numpy.linspace(start, end, n)`` and truncates each
value toward zero with ``int()``. For ``1-10 [5]`` linspace gives 1, 3.25, 5.5, 7.75, 10, so truncation gives
1,3,5,7,10 (rounding to nearest would give 1,3,6,8,10). Duplicates are kept, as in A1111 (``1-3 [5]`` ->
1,1,2,2,3).

Where loracam departs from A1111, on purpose:
- A stepped range never goes past its end: A1111 evaluates ``range(start, end + step, step)``, so ``1-6 (+2)``
  gives 1,3,5,7 there; here it gives 1,3,5.
- A range without a step counts down when the end is below the start (``5-1`` -> 5,4,3,2,1); A1111 returns
  nothing for it.
- A step that points away from the end, a zero step and a count of 0 are errors, not empty lists.
- Float ranges are rounded so that float steps do not accumulate error: a stepped range is rounded to the
  decimals written in its numbers (``0.2-0.6 (+0.1)`` -> exactly 0.2,0.3,0.4,0.5,0.6, 0.6 included), a
  counted one to 6 decimals (``0-1 [4]`` -> 0, 0.333333, 0.666667, 1).
"""

from __future__ import annotations

import csv
import io
import math
import re
from typing import Callable

import numpy as np

from loracam.errors import LoracamError

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_COUNT_DECIMALS = 6  # counted float ranges: enough to keep 1/3 steps distinct, few enough to hide float noise
_EPS = 1e-9


def _range_re(num: str) -> re.Pattern:
    # start - end, then optionally (step) or [count]; a bare "-1" has no second number and is a plain value
    return re.compile(rf"\s*({num})\s*-\s*({num})\s*(?:\(\s*({num})\s*\)|\[\s*({_INT})\s*\])?\s*")


_INT_RANGE = _range_re(_INT)
_FLOAT_RANGE = _range_re(_FLOAT)

_NOT_A_VALUE = {"int": "is not a whole number or a range", "float": "is not a number or a range"}
_FORMS = {
    "int": "values like 1, 3, 5 or ranges 1-5, 1-5 (+2), 10-1 (-3), 1-10 [5]",
    "float": "values like 0.5, 0.7 or ranges 0.2-0.6 (+0.1), 0.2-0.6 [5], 5-9",
    "str": 'values separated by commas, e.g. Euler a, DPM++ 2M (quote a value that contains a comma: "a, b")',
}


def split_csv(text: str) -> list[str]:
    """The stripped, non-empty entries of a CSV line (several lines are read as one list)."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as e:
        raise LoracamError(f"cannot read the values {text!r} as a comma-separated list ({e}); "
                           f"check the quotes") from None
    return [item.strip() for row in rows for item in row if item.strip()]


def _number(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _decimals(text: str) -> int:
    _, dot, frac = _number(text).partition(".")
    return len(frac) if dot else 0


def _bad(item: str, kind: str, why: str = "is not a number or a range") -> LoracamError:
    return LoracamError(f"{item!r} {why}. Valid forms: {_FORMS[kind]}")


def _direction(item: str, kind: str, start: float, end: float, step: float | None) -> float:
    """The step to use; the default steps by 1 toward the end."""
    if step is None:
        return 1 if end >= start else -1
    if step == 0:
        raise _bad(item, kind, "has a step of 0, which never reaches the end")
    if (end - start) * step < 0:
        raise _bad(item, kind, f"steps by {step:+g}, away from its end {end:g}; flip the sign of the step")
    return step


def _count(item: str, kind: str, text: str) -> int:
    n = int(_number(text))
    if n < 1:
        raise _bad(item, kind, f"asks for {n} values; ask for at least [1]")
    return n


def _int_range(item: str, m: re.Match) -> list[int]:
    start, end = int(_number(m[1])), int(_number(m[2]))
    if m[4] is not None:
        return [int(x) for x in np.linspace(start, end, _count(item, "int", m[4])).tolist()]
    step = int(_direction(item, "int", start, end, None if m[3] is None else int(_number(m[3]))))
    return list(range(start, end + (1 if step > 0 else -1), step))


def _float_range(item: str, m: re.Match) -> list[float]:
    start, end = float(_number(m[1])), float(_number(m[2]))
    if m[4] is not None:
        return [round(x, _COUNT_DECIMALS) + 0.0 for x in np.linspace(start, end, _count(item, "float", m[4])).tolist()]
    step = _direction(item, "float", start, end, None if m[3] is None else float(_number(m[3])))
    digits = max(_decimals(g) for g in (m[1], m[2], m[3] or "1"))
    n = math.floor((end - start) / step + _EPS) + 1  # multiply, never accumulate: 0.6 stays in
    return [round(start + i * step, digits) + 0.0 for i in range(n)]  # + 0.0 turns -0.0 into 0.0


def _to_int(item: str) -> int:
    return int(item)


def _to_float(item: str) -> float:
    value = float(item)
    if not math.isfinite(value):
        raise ValueError(item)
    return value


# kind -> (range pattern, range expander, single-value converter)
_NUMERIC: dict[str, tuple[re.Pattern, Callable, Callable]] = {
    "int": (_INT_RANGE, _int_range, _to_int),
    "float": (_FLOAT_RANGE, _float_range, _to_float),
}


def _numeric(items: list[str], kind: str) -> list:
    pattern, expand, convert = _NUMERIC[kind]
    out: list = []
    for item in items:
        try:
            out.append(convert(item))
            continue
        except ValueError:
            pass
        m = pattern.fullmatch(item)
        if m is None:
            raise _bad(item, kind, _NOT_A_VALUE[kind])
        out.extend(expand(item, m))
    return out


def parse_values(text: str, kind: str) -> list:
    """The values of one X/Y/Z axis in A1111's syntax; kind is "int", "float" or "str"."""
    if kind not in _FORMS:
        raise ValueError(f"value kind must be one of {', '.join(_FORMS)}, not {kind!r}")
    items = split_csv(text)
    if not items:
        raise LoracamError(f"no values given ({text!r}). Valid forms: {_FORMS[kind]}")
    return items if kind == "str" else _numeric(items, kind)
