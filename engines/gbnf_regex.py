"""A JSON Schema ``pattern`` as a grammar for the JSON string text that matches it.

Supported: literals and escapes, ``.``, classes (ranges, negation, ``\\d \\w \\s`` and their
negations), groups (capturing, ``(?:...)``, named), ``|``, the quantifiers ``* + ? {n} {n,}
{,m} {n,m}`` (lazy ones read as greedy: the same strings match), and ``^``/``$`` at the start
and end of the pattern or of its top-level alternatives; an unanchored side may be surrounded
by any text, as JSON Schema's search semantics say. Refused with ``PatternError`` (naming the
feature): lookaround, backreferences, word boundaries and other assertions, atomic groups,
possessive quantifiers, inline flags, anchors anywhere else.

The validator checks ``pattern`` with Python's ``re``, so the grammar admits a subset of what
``re.search`` accepts: ``\\d \\w \\s`` are their ASCII/ECMAScript sets (Python's are wider), but
inside a negation the wider sets are removed, so ``[^\\d]`` never admits an Arabic digit. Each
character is written the way JSON needs it (a quote as ``\\"``, a newline as ``\\n``).
Pure: trees only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Final

from engines.gbnf import EMPTY, Node, alt, normalize, rep, seq
from engines.gbnf_json import UNIVERSE, Ranges, json_chars


class PatternError(ValueError):
    """The pattern uses something the grammar cannot express; the message says what."""


_QUANTIFIER: Final = re.compile(r"\{(\d*)(,(\d*))?\}")
_DIGITS: Final[Ranges] = ((0x30, 0x39),)
_WORD: Final[Ranges] = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACES: Final[Ranges] = (
    (0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
    (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
)  # fmt: skip
_LINE_ENDS: Final[Ranges] = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
_SIMPLE_ESCAPES: Final = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07}
_ASSERTIONS: Final = {
    "b": "word boundary `\\b`",
    "B": "`\\B`",
    "A": "`\\A`",
    "Z": "`\\Z`",
    "z": "`\\z`",
    "G": "`\\G`",
}


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    start = 0
    for low, high in normalize(list(ranges)):
        out.append((start, low - 1))
        start = high + 1
    out.append((start, 0x10FFFF))
    return normalize(out)  # surrogates included: ``json_chars`` never writes them


@functools.cache
def _python_class(test: Callable[[str], bool]) -> Ranges:
    """Every code point Python's ``re`` puts in a class, found by its own predicate."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if test(chr(cp)):
            ranges.append((cp, cp))
    return normalize(ranges)


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


# (narrow set: surely in the class for Python; wide set: every code point Python puts in it)
_CLASS_ESCAPES: Final[dict[str, tuple[Ranges, Callable[[], Ranges]]]] = {
    "d": (_DIGITS, lambda: _python_class(str.isdecimal)),
    "w": (_WORD, lambda: _python_class(_is_word)),
    "s": (_SPACES, lambda: _python_class(str.isspace)),
}


def pattern_node(pattern: str) -> Node:
    """The grammar for JSON string text (between the quotes) that ``pattern`` matches."""
    return _Parser(pattern).parse()


class _Parser:
    def __init__(self, pattern: str) -> None:
        self._p = pattern
        self._i = 0

    def parse(self) -> Node:
        options = [self._top_alternative()]
        while self._peek() == "|":
            self._i += 1
            options.append(self._top_alternative())
        if self._peek() is not None:
            raise self._error("unbalanced `)`")
        return alt(*options)

    # --- structure --------------------------------------------------------------------------

    def _top_alternative(self) -> Node:
        """One top-level alternative; a side without its anchor takes any text (search)."""
        anything = rep(self._set_node(UNIVERSE), 0, None)
        start = self._peek() == "^"
        self._i += start
        items: list[Node] = [EMPTY if start else anything]
        end = False
        while (c := self._peek()) not in (None, "|", ")"):
            if c == "$" and self._p[self._i + 1 : self._i + 2] in ("", "|"):
                self._i += 1
                end = True
                break
            items.append(self._term())
        return seq(*items, EMPTY if end else anything)

    def _disjunction(self) -> Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self._i += 1
            options.append(self._sequence())
        return alt(*options)

    def _sequence(self) -> Node:
        items: list[Node] = []
        while self._peek() not in (None, "|", ")"):
            items.append(self._term())
        return seq(*items)

    def _term(self) -> Node:
        atom = self._atom()
        low_high = self._quantifier()
        if low_high is None:
            return atom
        if self._peek() == "?":  # lazy: matches the same strings
            self._i += 1
        elif self._peek() == "+":
            raise self._error("possessive quantifier")
        return rep(atom, *low_high)

    def _quantifier(self) -> tuple[int, int | None] | None:
        c = self._peek()
        if c in ("*", "+", "?"):
            self._i += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        match = _QUANTIFIER.match(self._p, self._i) if c == "{" else None
        if match is None or (match.group(1) == "" and match.group(2) is None):
            return None  # Python reads a brace that is no quantifier as itself
        self._i = match.end()
        low = int(match.group(1) or 0)
        high = match.group(3) if match.group(2) else match.group(1)
        return low, int(high) if high else None

    def _atom(self) -> Node:
        c = self._take()
        if c == ".":
            return self._set_node(_complement(_LINE_ENDS))
        if c == "(":
            return self._group()
        if c == "[":
            return self._set_node(self._class())
        if c == "\\":
            return self._set_node(self._escape(in_class=False))
        if c in "^$":
            raise self._error(f"`{c}` anywhere but the start or end of the pattern")
        if c in "*+?":
            raise self._error(f"`{c}` with nothing to repeat")
        return self._set_node(((ord(c), ord(c)),))

    def _group(self) -> Node:
        if self._p.startswith("?:", self._i):
            self._i += 2
        elif self._p.startswith(("?<", "?P<"), self._i) and not self._p.startswith(
            ("?<=", "?<!"), self._i
        ):
            close = self._p.find(">", self._i)
            if close < 0:
                raise self._error("unterminated group name")
            self._i = close + 1
        elif self._peek() == "?":
            what = {"=": "lookahead", "!": "lookahead", "<": "lookbehind", ">": "atomic group"}
            raise self._error(what.get(self._p[self._i + 1 : self._i + 2], "`(?` group or flag"))
        node = self._disjunction()
        if self._peek() != ")":
            raise self._error("unbalanced `(`")
        self._i += 1
        return node

    # --- characters -------------------------------------------------------------------------

    def _class(self) -> Ranges:
        negated = self._peek() == "^"
        self._i += negated
        items: list[tuple[int, int]] = []
        first = True
        while first or self._peek() != "]":
            if self._peek() is None:
                raise self._error("unterminated `[`")
            first = False
            low = self._class_atom(negated)
            if isinstance(low, tuple):
                items += low
                continue
            if self._peek() == "-" and self._p[self._i + 1 : self._i + 2] not in ("]", ""):
                self._i += 1
                high = self._class_atom(negated)
                if isinstance(high, tuple):
                    raise self._error("a class escape as the end of a range")
                items.append((low, high))
            else:
                items.append((low, low))
        self._i += 1
        return _complement(tuple(items)) if negated else tuple(items)

    def _class_atom(self, negated: bool) -> int | Ranges:
        c = self._take()
        if c != "\\":
            return ord(c)
        if self._peek() == "b":
            self._i += 1
            return 0x08  # backspace, inside a class
        ranges = self._escape(in_class=True, wide=negated)
        return ranges[0][0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else ranges

    def _escape(self, *, in_class: bool, wide: bool = False) -> Ranges:
        """The code points of an escape; ``wide`` (inside a negated class) takes Python's
        full sets for ``\\d \\w \\s``, so what the negation leaves is surely outside them."""
        c = self._take()
        if c.lower() in _CLASS_ESCAPES:
            narrow, full = _CLASS_ESCAPES[c.lower()]
            if c.islower():
                return full() if wide else narrow
            return _complement(narrow) if wide else _complement(full())
        if c in _ASSERTIONS and not in_class:
            raise self._error(_ASSERTIONS[c])
        if c in _SIMPLE_ESCAPES:
            return ((_SIMPLE_ESCAPES[c],) * 2,)
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self._p[self._i : self._i + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self._error(f"`\\{c}` without {width} hex digits")
            self._i += width
            return ((int(digits, 16),) * 2,)
        if c == "0":
            octal = re.match(r"[0-7]{0,2}", self._p[self._i :])
            digits = octal.group(0) if octal else ""
            self._i += len(digits)
            return ((int("0" + digits, 8),) * 2,)
        if c.isdigit() or c in "kg":
            raise self._error("backreference")
        if c.isalnum():
            raise self._error(f"escape `\\{c}`")
        return ((ord(c), ord(c)),)

    def _set_node(self, ranges: Ranges) -> Node:
        node = json_chars(ranges)
        if node is None:
            raise self._error("a character class that matches nothing")
        return node

    # --- reading ----------------------------------------------------------------------------

    def _peek(self) -> str | None:
        return self._p[self._i] if self._i < len(self._p) else None

    def _take(self) -> str:
        c = self._peek()
        if c is None:
            raise self._error("unexpected end")
        self._i += 1
        return c

    def _error(self, what: str) -> PatternError:
        return PatternError(f"{what} (at offset {self._i} of /{self._p}/) is not supported")
