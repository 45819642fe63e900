r"""Prompt editing ``[from:to:when]``, ``[to:when]``, ``[from::when]`` and alternation ``[a|b]``.

A1111 parses these with a lark Earley grammar (interop.md section 6):

    start:       (prompt | /[][():]/+)*
    prompt:      (emphasized | scheduled | alternate | plain | WHITESPACE)*
    emphasized:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"      (brackets kept as text)
    scheduled:   "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate:   "[" prompt ("|" [prompt])+ "]"
    plain:       /([^\\\[\]():|]|\\.)+/

This module accepts the same language with a small backtracking parser instead (no lark dependency):
at the top level a bracket that opens nothing parseable is literal text; anywhere else a failed
construct fails the whole prompt, which is then used literally, as in A1111.

Timing (A1111 >= 1.6 default): a ``when`` written with a dot is a fraction of the steps
(``0.25`` of 20 -> 5), one without a dot is a step number; both are capped at the step count.
The conditioning for 0-based sampling step i is the first schedule entry whose end step is >= i.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_WS = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)")


@dataclass
class Text:
    text: str


@dataclass
class Emph:
    open: str
    first: list
    second: list | None  # the part after ":" in "(a:b)"
    close: str


@dataclass
class Sched:
    before: list | None
    after: list
    number: str
    when: int = 0  # resolved for a given step count


@dataclass
class Alt:
    options: list  # list of node lists (empty list for an empty option)


class _Fail(Exception):
    pass


class _Parser:
    def __init__(self, s: str):
        self.s = s

    def top(self) -> list:
        nodes, i = [], 0
        while i < len(self.s):
            items, j = self.prompt(i)
            nodes += items
            if j < len(self.s):
                if self.s[j] not in "[]():":
                    raise _Fail  # e.g. a "|" outside brackets, or a trailing lone backslash
                nodes.append(Text(self.s[j]))
                j += 1
            i = j
        return nodes

    def prompt(self, i: int) -> tuple[list, int]:
        """Items until a character that ends a prompt; a bracket that can't be parsed stops it too."""
        items = []
        while i < len(self.s):
            c = self.s[i]
            if c in "([":
                try:
                    node, i = self.bracket(i)
                except _Fail:
                    break
                items.append(node)
                continue
            m = _PLAIN.match(self.s, i)
            if not m:
                break
            items.append(Text(m.group(0)))
            i = m.end()
        return items, i

    def inner(self, i: int) -> tuple[list, int]:
        """A nested prompt: it must stop at a delimiter, not at an unparseable bracket."""
        items, j = self.prompt(i)
        if j < len(self.s) and self.s[j] in "([":
            raise _Fail
        return items, j

    def bracket(self, i: int):
        if self.s[i] == "(":
            return self.round(i)
        for attempt in (self.scheduled_full, self.scheduled_short, self.alternate, self.square):
            try:
                return attempt(i)
            except _Fail:
                continue
        raise _Fail

    def expect(self, i: int, ch: str) -> int:
        if i < len(self.s) and self.s[i] == ch:
            return i + 1
        raise _Fail

    def round(self, i: int):
        first, j = self.inner(i + 1)
        if j < len(self.s) and self.s[j] == ")":
            return Emph("(", first, None, ")"), j + 1
        j = self.expect(j, ":")
        second, j = self.inner(j)
        j = self.expect(j, ")")
        return Emph("(", first, second, ")"), j

    def square(self, i: int):
        first, j = self.inner(i + 1)
        j = self.expect(j, "]")
        return Emph("[", first, None, "]"), j

    def when(self, j: int) -> tuple[str, int]:
        m = _WS.match(self.s, j)
        j = m.end() if m else j
        m = _NUMBER.match(self.s, j)
        if not m:
            raise _Fail
        number, j = m.group(0), m.end()
        m = _WS.match(self.s, j)
        j = m.end() if m else j
        return number, self.expect(j, "]")

    def scheduled_full(self, i: int):
        before, j = self.inner(i + 1)
        j = self.expect(j, ":")
        after, j = self.inner(j)
        j = self.expect(j, ":")
        number, j = self.when(j)
        return Sched(before, after, number), j

    def scheduled_short(self, i: int):
        after, j = self.inner(i + 1)
        j = self.expect(j, ":")
        number, j = self.when(j)
        return Sched(None, after, number), j

    def alternate(self, i: int):
        first, j = self.inner(i + 1)
        options = [first]
        if not (j < len(self.s) and self.s[j] == "|"):
            raise _Fail
        while j < len(self.s) and self.s[j] == "|":
            opt, j = self.inner(j + 1)
            options.append(opt)
        j = self.expect(j, "]")
        return Alt(options), j


def _walk(nodes: list):
    for n in nodes:
        yield n
        if isinstance(n, Emph):
            yield from _walk(n.first)
            yield from _walk(n.second or [])
        elif isinstance(n, Sched):
            yield from _walk(n.before or [])
            yield from _walk(n.after)
        elif isinstance(n, Alt):
            for opt in n.options:
                yield from _walk(opt)


def _render(nodes: list, step: int) -> str:
    out = []
    for n in nodes:
        if isinstance(n, Text):
            out.append(n.text)
        elif isinstance(n, Emph):
            out.append(n.open + _render(n.first, step))
            if n.second is not None:
                out.append(":" + _render(n.second, step))
            out.append(n.close)
        elif isinstance(n, Sched):
            out.append(_render(n.before or [], step) if step <= n.when else _render(n.after, step))
        elif isinstance(n, Alt):
            out.append(_render(n.options[(step - 1) % len(n.options)], step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(end_step, text), ...] for ``steps`` sampling steps, as A1111 computes it."""
    try:
        nodes = _Parser(prompt).top()
    except _Fail:
        return [(steps, prompt)]
    ends = {steps}
    for n in _walk(nodes):
        if isinstance(n, Sched):
            v = float(n.number)
            v = v * steps if "." in n.number else v
            n.when = min(steps, int(v))
            if n.when >= 1:
                ends.add(n.when)
        elif isinstance(n, Alt):
            ends.update(range(1, steps + 1))
    return [(t, _render(nodes, t)) for t in sorted(ends)]


def text_at_step(schedule: list[tuple[int, object]], step: int) -> int:
    """Index of the schedule entry used at 0-based sampling step ``step`` (A1111's rule); only each entry's
    end step is read, so any (end_step, payload) list works."""
    for i, (end, _) in enumerate(schedule):
        if step <= end:
            return i
    return 0
