"""JSON as grammar machines: the pieces ``compile_schema`` assembles into a ``Grammar``.

What the machines let a model write, on purpose narrower than JSON itself:

- Whitespace: none, except one optional space after ``:`` and after ``,`` (what ``json.dumps``
  writes by default, so models know it). No newlines or indentation: that rules out the classic
  endless-whitespace loop and keeps outputs short.
- Numbers: at most 15 integer digits, 15 fraction digits and 2 exponent digits, so every number
  parses to a finite double (Python's ``json`` turns ``1e400`` into ``inf``).
- Strings: any valid UTF-8 (RFC 3629: no overlongs, no surrogates), escapes per RFC 8259 7 with
  ``\\u`` surrogates refused; no control characters.
- Objects with declared properties: keys in declaration order, each at most once; optional ones
  may be skipped. Free-form values (``json_object`` mode, schemas without a type) nest at most
  ``MAX_FREE_DEPTH`` deep.
"""

from __future__ import annotations

import json
from itertools import pairwise

from mlxd.constrain.grammar import Machine

MAX_INT_DIGITS = 15  # 15 significant digits round-trip through a double
MAX_FRAC_DIGITS = 15
MAX_EXP_DIGITS = 2  # 1e99 at most: never inf
MAX_FREE_DEPTH = 12  # nesting of free-form objects and arrays

DIGITS = b"0123456789"
HEX = b"0123456789abcdefABCDEF"
SPACE = b" "


def _string_machine() -> Machine:
    m = Machine("string", leaf="string")
    (start, body, closed, esc, u0, u1, u1d, u2, u3, c1, c2, c3, e0, ed, f0, f4) = (
        m.state() for _ in range(16)
    )
    m.final[closed] = True
    m.edge(start, b'"', body)
    m.edge(body, (b for b in range(0x20, 0x80) if b not in b'"\\'), body)
    m.edge(body, b'"', closed)
    m.edge(body, b"\\", esc)
    m.edge(esc, b'"\\/bfnrt', body)
    m.edge(esc, b"u", u0)
    m.edge(u0, (b for b in HEX if b not in b"dD"), u1)
    m.edge(u0, b"dD", u1d)
    m.edge(u1d, b"01234567", u2)  # \uD800-\uDFFF are lone surrogates: not text
    m.edge(u1, HEX, u2)
    m.edge(u2, HEX, u3)
    m.edge(u3, HEX, body)
    for state, (lo, hi), nxt in (
        (body, (0xC2, 0xE0), c1),
        (body, (0xE1, 0xED), c2),
        (body, (0xEE, 0xF0), c2),
        (body, (0xF1, 0xF4), c3),
        (c1, (0x80, 0xC0), body),
        (c2, (0x80, 0xC0), c1),
        (c3, (0x80, 0xC0), c2),
        (e0, (0xA0, 0xC0), c1),
        (ed, (0x80, 0xA0), c1),
        (f0, (0x90, 0xC0), c2),
        (f4, (0x80, 0x90), c2),
    ):
        m.edge(state, range(lo, hi), nxt)
    m.edge(body, b"\xe0", e0)
    m.edge(body, b"\xed", ed)
    m.edge(body, b"\xf0", f0)
    m.edge(body, b"\xf4", f4)
    return m


def _number_machine(integer: bool) -> Machine:
    name = "integer" if integer else "number"
    m = Machine(name, leaf=name)
    start, minus, zero = m.state(), m.state(), m.state(final=True)
    ints = [m.state(final=True) for _ in range(MAX_INT_DIGITS)]
    m.edge(start, b"-", minus)
    for s in (start, minus):
        m.edge(s, b"0", zero)
        m.edge(s, DIGITS[1:], ints[0])
    for a, b in pairwise(ints):
        m.edge(a, DIGITS, b)
    if integer:
        return m
    dot, exp, sign = m.state(), m.state(), m.state()
    fracs = [m.state(final=True) for _ in range(MAX_FRAC_DIGITS)]
    exps = [m.state(final=True) for _ in range(MAX_EXP_DIGITS)]
    for s in [zero] + ints:
        m.edge(s, b".", dot)
        m.edge(s, b"eE", exp)
    m.edge(dot, DIGITS, fracs[0])
    for a, b in pairwise(fracs):
        m.edge(a, DIGITS, b)
    for s in fracs:
        m.edge(s, b"eE", exp)
    m.edge(exp, b"+-", sign)
    for s in (exp, sign):
        m.edge(s, DIGITS, exps[0])
    for a, b in pairwise(exps):
        m.edge(a, DIGITS, b)
    return m


# The leaves: machines every grammar copies unchanged, so the vocabulary's per-state token
# tables (TokenVocabulary.leaf_table) serve all grammars alike.
LEAVES = {
    "string": _string_machine(),
    "number": _number_machine(False),
    "integer": _number_machine(True),
}


def literal_bytes(value) -> bytes:
    """The one spelling we generate for an enum/const value: compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class Builder:
    """Appends machines for JSON values; each method returns the new machine's index."""

    def __init__(self) -> None:
        self.machines: list[Machine] = []
        self._shared: dict = {}

    def add(self, m: Machine) -> int:
        self.machines.append(m)
        return len(self.machines) - 1

    def leaf(self, name: str) -> int:
        if name not in self._shared:
            src = LEAVES[name]
            self._shared[name] = self.add(
                Machine(
                    src.name,
                    src.leaf,
                    [dict(e) for e in src.edges],
                    [[] for _ in src.calls],
                    list(src.final),
                )
            )
        return self._shared[name]

    def literals(self, values: list[bytes], name: str = "literal") -> int:
        m = Machine(name)
        start = m.state()
        for v in values:
            m.final[m.chain(start, v)] = True
        return self.add(m)

    def choice(self, alternatives: list[int], name: str = "anyOf") -> int:
        if len(alternatives) == 1:
            return alternatives[0]
        m = Machine(name)
        start, end = m.state(), m.state(final=True)
        for alt in alternatives:
            m.call(start, alt, end)
        return self.add(m)

    def reference(self, name: str) -> int:
        """A stand-in for a ``$ref`` target not compiled yet (recursion); see ``resolve``."""
        m = Machine(name)
        m.state()
        m.state(final=True)
        return self.add(m)

    def resolve(self, ref: int, target: int) -> None:
        self.machines[ref].call(0, target, 1)

    def obj(self, props: list[tuple[str, int, bool]], name: str = "object") -> int:
        """An object with declared ``(key, value machine, required)`` properties, in order."""
        m = Machine(name)
        start, end, opened = m.state(), m.state(final=True), m.state()
        m.edge(start, b"{", opened)
        after: dict[int, int] = {}  # i -> the state after property i-1's value

        def after_value(i: int) -> int:
            if i not in after:
                after[i] = m.state()
            return after[i]

        def keys(i: int, sources: list[int]) -> None:
            """Keys that may come next from position i: the next ones up to the first required."""
            first = m.state()
            for j in range(i, len(props)):
                key, value, required = props[j]
                colon = m.chain(first, json.dumps(key, ensure_ascii=False).encode() + b":")
                spaced = m.state()
                m.edge(colon, SPACE, spaced)
                for s in (colon, spaced):
                    m.call(s, value, after_value(j + 1))
                if required:
                    break
            for s in sources:
                m.edges[s].update(m.edges[first])

        def may_close(i: int) -> bool:
            return not any(required for _, _, required in props[i:])

        keys(0, [opened])
        if may_close(0):
            m.edge(opened, b"}", end)
        done: set[int] = set()
        while len(done) < len(after):
            i = min(set(after) - done)
            done.add(i)
            if may_close(i):
                m.edge(after[i], b"}", end)
            if i < len(props):
                comma, spaced = m.state(), m.state()
                m.edge(after[i], b",", comma)
                m.edge(comma, SPACE, spaced)
                keys(i, [comma, spaced])
        return self.add(m)

    def free_object(self, value: int) -> int:
        """``{"any key": value, ...}``: keys are free strings (duplicates possible)."""
        key = self.leaf("string")
        m = Machine("object")
        start, end = m.state(), m.state(final=True)
        opened, colon, val, spaced, after, comma, cspaced = (m.state() for _ in range(7))
        m.edge(start, b"{", opened)
        m.edge(opened, b"}", end)
        m.edge(colon, b":", val)
        m.edge(val, SPACE, spaced)
        m.edge(after, b",", comma)
        m.edge(after, b"}", end)
        m.edge(comma, SPACE, cspaced)
        for s in (opened, comma, cspaced):
            m.call(s, key, colon)
        for s in (val, spaced):
            m.call(s, value, after)
        return self.add(m)

    def array(self, item: int, min_items: int = 0, max_items: int | None = None) -> int:
        m = Machine("array")
        start, end, opened = m.state(), m.state(final=True), m.state()
        m.edge(start, b"[", opened)
        if min_items == 0:
            m.edge(opened, b"]", end)
        if max_items == 0:
            return self.add(m)
        # Count items only as far as the bounds need; past min_items (no max) one state loops.
        top = max_items if max_items is not None else max(min_items, 1)
        after = [opened] + [m.state() for _ in range(top)]  # after[k]: k items read
        m.call(opened, item, after[1])
        for k in range(1, top + 1):
            if k >= min_items:
                m.edge(after[k], b"]", end)
            if max_items is None or k < max_items:
                comma, spaced = m.state(), m.state()
                m.edge(after[k], b",", comma)
                m.edge(comma, SPACE, spaced)
                for s in (comma, spaced):
                    m.call(s, item, after[min(k + 1, top)])
        return self.add(m)

    def any_value(self, depth: int = 0) -> int:
        """Any JSON value, objects and arrays nested at most ``MAX_FREE_DEPTH`` deep."""
        key = ("any", min(depth, MAX_FREE_DEPTH))
        if key not in self._shared:
            alts = [
                self.leaf("string"),
                self.leaf("number"),
                self.literals([b"true", b"false", b"null"]),
            ]
            if depth < MAX_FREE_DEPTH:
                inner = self.any_value(depth + 1)
                alts += [self.free_object(inner), self.array(inner)]
            self._shared[key] = self.choice(alts, "value")
        return self._shared[key]
