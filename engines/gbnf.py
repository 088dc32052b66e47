"""A small grammar tree for llama.cpp's GBNF, and the named rules that render it as text.

The schema converter (``engines.schema_grammar``) and its parts (numbers, patterns, JSON
strings) build ``Node`` trees with the constructors here (``lit``, ``chars``, ``seq``, ``alt``,
``rep``), which simplify as they go, and ``Grammar`` names rules (recursion needs a name) and
renders ``root ::= ...`` text for llama.cpp. Trees rather than text, so the number and pattern
grammars are tested as languages (tests translate a tree into a Python regex) instead of as
strings. Pure: no llama.cpp, no I/O; it never decides what a schema means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, assert_never


@dataclass(frozen=True, slots=True)
class Lit:
    """Exactly this text (``""`` is the empty string)."""

    text: str


@dataclass(frozen=True, slots=True)
class Chars:
    """One code point out of sorted, disjoint, inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Rep:
    """``item`` repeated ``low`` to ``high`` times (``None``: no upper limit)."""

    item: Node
    low: int
    high: int | None


@dataclass(frozen=True, slots=True)
class Ref:
    """The rule called ``name`` in the ``Grammar`` being built."""

    name: str


Node = Lit | Chars | Seq | Alt | Rep | Ref

EMPTY: Final = Lit("")
_RULE_NAME_JUNK: Final = re.compile(r"[^a-zA-Z0-9-]+")  # llama.cpp's rule names: [a-zA-Z0-9-]
_LITERAL_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def lit(text: str) -> Lit:
    return Lit(text)


def chars(*spans: str | tuple[int, int]) -> Chars:
    """A character class from ``"a-z"`` ranges, single characters and code point ranges."""
    ranges: list[tuple[int, int]] = []
    for span in spans:
        if isinstance(span, tuple):
            ranges.append(span)
        elif len(span) == 1:
            ranges.append((ord(span), ord(span)))
        elif len(span) == 3 and span[1] == "-":
            ranges.append((ord(span[0]), ord(span[2])))
        else:
            raise ValueError(f"not a character or a range: {span!r}")
    return Chars(normalize(ranges))


def one_of(text: str) -> Chars:
    """A character class of every character in ``text``."""
    return chars(*text)


def normalize(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged (touching ranges join), empty ranges dropped."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(r for r in ranges if r[0] <= r[1]):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return tuple(out)


def seq(*items: Node) -> Node:
    flat: list[Node] = []
    for item in items:
        for part in item.items if isinstance(item, Seq) else (item,):
            if isinstance(part, Lit) and flat and isinstance(flat[-1], Lit):
                flat[-1] = Lit(flat[-1].text + part.text)
            elif part != EMPTY:
                flat.append(part)
    if not flat:
        return EMPTY
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*options: Node) -> Node:
    """At least one option; an empty option makes the rest optional."""
    if not options:
        raise ValueError("an alternative needs at least one option")
    flat: list[Node] = []
    for option in options:
        for part in option.options if isinstance(option, Alt) else (option,):
            if part not in flat:
                flat.append(part)
    if EMPTY in flat and len(flat) > 1:
        return opt(alt(*(o for o in flat if o != EMPTY)))
    classes = [o for o in flat if isinstance(o, Chars)]
    if len(classes) > 1:  # one class reads better and samples the same
        merged = Chars(normalize([r for c in classes for r in c.ranges]))
        flat = [merged if o is classes[0] else o for o in flat if o not in classes[1:]]
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def rep(item: Node, low: int, high: int | None) -> Node:
    if high == 0 or item == EMPTY:
        return EMPTY
    if low == high == 1:
        return item
    return Rep(item, low, high)


def opt(item: Node) -> Node:
    return rep(item, 0, 1)


# --- rendering ------------------------------------------------------------------------------


def render(node: Node) -> str:
    """GBNF text for ``node`` (the right-hand side of a rule)."""
    match node:
        case Lit(text):
            return '"' + "".join(_literal_char(c) for c in text) + '"'
        case Chars(ranges):
            return "[" + "".join(_class_range(low, high) for low, high in ranges) + "]"
        case Seq(items):
            return " ".join(_render_in_seq(item) for item in items)
        case Alt(options):
            return " | ".join(render(option) for option in options)
        case Rep(item, low, high):
            return _render_atom(item) + _quantifier(low, high)
        case Ref(name):
            return name
        case _:
            assert_never(node)


def _render_in_seq(node: Node) -> str:
    return f"({render(node)})" if isinstance(node, Alt) else render(node)


def _render_atom(node: Node) -> str:
    simple = isinstance(node, Chars | Ref) or (isinstance(node, Lit) and len(node.text) == 1)
    return render(node) if simple else f"({render(node)})"


def _quantifier(low: int, high: int | None) -> str:
    if (low, high) == (0, None):
        return "*"
    if (low, high) == (1, None):
        return "+"
    if (low, high) == (0, 1):
        return "?"
    if high is None:
        return f"{{{low},}}"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _literal_char(c: str) -> str:
    if c in _LITERAL_ESCAPES:
        return _LITERAL_ESCAPES[c]
    return f"\\x{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c


def _class_char(cp: int) -> str:
    # Escaped by number: llama.cpp's parser knows no \- or \^, and a raw ] ends the class.
    if 0x20 < cp < 0x7F and chr(cp) not in '\\]-^["':
        return chr(cp)
    if cp <= 0xFF:
        return f"\\x{cp:02X}"
    return f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"


def _class_range(low: int, high: int) -> str:
    return _class_char(low) if low == high else f"{_class_char(low)}-{_class_char(high)}"


# --- named rules ----------------------------------------------------------------------------


class Grammar:
    """Named rules; ``with_root(root)`` hands them over, ``root`` first.

    ``rule`` reuses the name of an identical rule, so shared parts (the JSON string, a ``$ref``
    target) are written once. ``reserve`` then ``define`` name a rule before its body exists,
    which is how a recursive ``$ref`` refers to itself.
    """

    def __init__(self) -> None:
        self._rules: dict[str, Node | None] = {"root": None}
        self._by_body: dict[Node, str] = {}

    def rule(self, hint: str, body: Node) -> Ref:
        if isinstance(body, Ref):
            return body
        name = self._by_body.get(body)
        if name is None:
            name = self.reserve(hint)
            self.define(name, body)
        return Ref(name)

    def reserve(self, hint: str) -> str:
        base = _RULE_NAME_JUNK.sub("-", hint).strip("-") or "r"
        name, n = base, 1
        while name in self._rules:
            name, n = f"{base}-{n}", n + 1
        self._rules[name] = None
        return name

    def define(self, name: str, body: Node) -> None:
        self._rules[name] = body
        self._by_body.setdefault(body, name)

    def with_root(self, root: Node) -> dict[str, Node]:
        """Every rule by name, ``root`` first; every reserved name must be defined by now."""
        self._rules["root"] = root
        missing = [name for name, body in self._rules.items() if body is None]
        if missing:
            raise ValueError(f"rules reserved but never defined: {missing}")
        return {name: body for name, body in self._rules.items() if body is not None}


def rules_text(rules: dict[str, Node]) -> str:
    """GBNF text: one ``name ::= body`` line per rule."""
    return "".join(f"{name} ::= {render(body)}\n" for name, body in rules.items())
