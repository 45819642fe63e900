"""A1111's emphasis syntax: ``(x)`` x1.1, ``(x:1.4)``, ``[x]`` /1.1, escapes, unbalanced brackets, BREAK.

Follows A1111's ``parse_prompt_attention`` token for token (interop.md section 6), including its quirks:
an unclosed bracket applies to the rest of the prompt, a stray closer is literal text, ``(a:b)`` with a
non-numeric b keeps the colon as text at 1.1, and adjacent runs of equal weight merge (even two BREAKs).
"""

from __future__ import annotations

import re

ROUND = 1.1
SQUARE = 1 / 1.1

_TOKENS = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\      # escapes, then a lone backslash
    | \( | \[                                  # openers
    | :\s*([+-]?[.\d]+)\s*\)                   # ":1.4)" closes a round bracket with an explicit weight
    | \) | \]                                  # closers
    | [^\\()\[\]:]+                            # plain text
    | :                                        # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

BREAK_MARK = ("BREAK", -1.0)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (segment, weight) runs; BREAK appears as ("BREAK", -1)."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _TOKENS.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(res))
        elif tok == "[":
            square_open.append(len(res))
        elif weight is not None and round_open and _is_float(weight):
            multiply_from(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            multiply_from(round_open.pop(), ROUND)
        elif tok == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(tok)):
                if i > 0:
                    res.append(list(BREAK_MARK))
                res.append([part, 1.0])
    for pos in round_open:
        multiply_from(pos, ROUND)
    for pos in square_open:
        multiply_from(pos, SQUARE)
    if not res:
        res = [["", 1.0]]
    return _merge_runs(res)


def _merge_runs(res: list[list]) -> list[tuple[str, float]]:
    merged: list[list] = [res[0]]
    for text, weight in res[1:]:
        if merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(t, w) for t, w in merged]


def _is_float(s: str) -> bool:
    # A1111 would crash on "(a:.)"; treating such a weight as text is the only sensible reading.
    try:
        float(s)
        return True
    except ValueError:
        return False
