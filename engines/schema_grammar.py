"""A JSON Schema as a llama.cpp grammar: sampling under it can only write JSON the schema
accepts, as far as the keywords it enforces go (``engines.schema_keywords`` lists them).

The converter walks the schema the way llama.cpp's own converter does (``$ref``, unions,
``const``/``enum``, then by type) but builds trees (``engines.gbnf``) and adds what that one
lacks: numeric bounds (``engines.gbnf_numbers``), string characters a JSON decoder accepts,
lengths and item counts everywhere, calendar-true dates, and a ``pattern`` translator that
refuses what it cannot express instead of guessing (``engines.gbnf_regex``). What it cannot
express raises ``SchemaRefused`` naming the keyword and its place (``#/properties/age``);
keywords it only leaves to the validator are simply not written into the grammar. Pure:
schema in, grammar text out; validating the answer is ``engines.schema_contract``'s job.
"""

from __future__ import annotations

import json
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Final

from engines.errors import SchemaRefused
from engines.gbnf import EMPTY, Grammar, Node, Ref, alt, lit, opt, rep, rules_text, seq
from engines.gbnf_json import (
    BOOLEAN,
    FORMATS,
    INTEGER,
    NULL,
    NUMBER,
    SPACE,
    STRING_CHAR,
    AnyJson,
    any_json,
    quoted,
)
from engines.gbnf_numbers import MAX_INT_DIGITS, Bound, decimal_range, integer_range
from engines.gbnf_regex import PatternError, pattern_node
from engines.schema_keywords import (
    ARRAY_KEYWORDS,
    CHECKED_ARRAY,
    CHECKED_NUMBER,
    CHECKED_OBJECT,
    NUMBER_KEYWORDS,
    OBJECT_KEYWORDS,
    REFUSED,
    STRING_KEYWORDS,
)
from engines.schema_refs import SchemaRefs, constrains

COMMA: Final = seq(lit(","), SPACE)
MAX_DEPTH: Final = 100  # schemas nested deeper than this are refused, not a RecursionError
# Beyond 16 digits the grammar writes no number anyway, so a bound out there binds nothing.
_FAR: Final = Decimal(10) ** MAX_INT_DIGITS
_TYPE_HINTS: Final = (
    ("object", OBJECT_KEYWORDS | CHECKED_OBJECT),
    ("array", ARRAY_KEYWORDS | CHECKED_ARRAY),
    ("string", STRING_KEYWORDS),
    ("number", NUMBER_KEYWORDS | CHECKED_NUMBER),
)
_PYTHON_TYPES: Final = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "array": (list,),
    "object": (dict,),
}


def schema_gbnf(schema: Any) -> str:
    """GBNF text (root rule ``root``) for JSON answers to ``schema``; ``SchemaRefused`` when
    the schema uses something the grammar cannot express."""
    return rules_text(schema_rules(schema))


def schema_rules(schema: Any) -> dict[str, Node]:
    """The grammar as trees by rule name, ``root`` first (what ``schema_gbnf`` renders)."""
    converter = _Converter(schema)
    return converter.grammar.with_root(converter.visit(schema, "#"))


class _Converter:
    def __init__(self, root: Any) -> None:
        self.grammar = Grammar()
        self._refs = SchemaRefs(root)
        self._ref_rules: dict[str, Ref] = {}
        self._any: AnyJson | None = None
        self._depth = 0

    def visit(self, schema: Any, at: str) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:  # a recursive $ref that merging keeps unfolding
                where = at if len(at) <= 80 else at[:60] + "..."
                raise SchemaRefused("$ref", where, f"the schema nests deeper than {MAX_DEPTH}")
            return self._visit(schema, at)
        finally:
            self._depth -= 1

    def _visit(self, schema: Any, at: str) -> Node:
        if schema is True or schema == {}:
            return self._any_json().value
        if not isinstance(schema, dict):
            raise SchemaRefused("false" if schema is False else "type", at, "no value fits")
        refused = sorted(REFUSED & schema.keys())
        if refused:
            raise SchemaRefused(refused[0], at, "dynamic references are not supported")
        if "$ref" in schema and not constrains(schema, "$ref"):
            return self._ref(schema["$ref"], at)
        if "$ref" in schema or "allOf" in schema:
            return self.visit(self._refs.merge([schema], at), at)
        for key in ("anyOf", "oneOf"):  # oneOf as anyOf: "exactly one" is left to the check
            if key in schema:
                return self._union(schema, key, at)
        if "const" in schema:
            return seq(lit(_json_text(schema["const"])), SPACE)
        if "enum" in schema:
            return self._enum(schema, at)
        types = schema.get("type")
        if isinstance(types, list):
            if not types:
                raise SchemaRefused("type", at, "an empty list of types admits nothing")
            return alt(*(self._typed(schema, t, at) for t in dict.fromkeys(types)))
        return self._typed(schema, types or _implied_type(schema), at)

    def _typed(self, schema: dict[str, Any], kind: str | None, at: str) -> Node:
        match kind:
            case "object":
                return self._object(schema, at)
            case "array":
                return self._array(schema, at)
            case "string":
                return self._string(schema, at)
            case "integer":
                return seq(self._integer(schema, at), SPACE)
            case "number":
                return seq(self._number(schema, at), SPACE)
            case "boolean":
                return seq(BOOLEAN, SPACE)
            case "null":
                return seq(NULL, SPACE)
            case None:
                return self._any_json().value
            case _:
                raise SchemaRefused("type", at, f"unknown type {kind!r}")

    # --- references and combinations --------------------------------------------------------

    def _ref(self, ref: Any, at: str) -> Ref:
        pointer, target = self._refs.resolve(ref, at)
        known = self._ref_rules.get(pointer)
        if known is not None:
            return known  # also how a recursive schema refers to itself
        name = self.grammar.reserve(pointer.rsplit("/", 1)[-1] or "ref")
        self._ref_rules[pointer] = Ref(name)
        self.grammar.define(name, self.visit(target, pointer))
        return Ref(name)

    def _union(self, schema: dict[str, Any], key: str, at: str) -> Node:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise SchemaRefused(key, at, "needs at least one schema")
        rest = {k: v for k, v in schema.items() if k != key}
        if constrains(rest):  # keywords beside anyOf apply to every branch
            branches = [self._refs.merge([rest, b], at) for b in branches]
        options = [
            self.visit(b, f"{at}/{key}/{i}") for i, b in enumerate(branches) if b is not False
        ]
        if not options:
            raise SchemaRefused(key, at, "every branch is `false`: no value fits")
        return alt(*options)

    def _enum(self, schema: dict[str, Any], at: str) -> Node:
        values = schema["enum"]
        if "type" in schema:  # a value of another type would fail the check
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            values = [v for v in values if any(_has_type(v, t) for t in types)]
        if not values:
            raise SchemaRefused("enum", at, "no value of it has the schema's `type`")
        return seq(alt(*(lit(_json_text(v)) for v in values)), SPACE)

    # --- objects and arrays -----------------------------------------------------------------

    def _object(self, schema: dict[str, Any], at: str) -> Node:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = list(dict.fromkeys(schema.get("required") or []))
        extra = schema.get("additionalProperties")
        if not properties and not required and extra in (None, True):
            return self._any_json().object
        names = [*properties, *(n for n in required if n not in properties)]
        undeclared = names[len(properties) :]
        if undeclared and extra is False and "patternProperties" not in schema:
            why = f"`{undeclared[0]}` is required but `additionalProperties` is false"
            raise SchemaRefused("required", at, why)
        members = {n: self._member(n, properties.get(n, True), _pointer(at, n)) for n in names}
        optional = [members[n] for n in names if n not in required]
        if extra is True or isinstance(extra, dict):  # extra members come after the named ones
            value = self.visit(extra, f"{at}/additionalProperties")
            member = seq(self._any_json().string, lit(":"), SPACE, value)
            optional.append(seq(member, rep(seq(COMMA, member), 0, None)))
        body = _joined([members[n] for n in names if n in required])
        if optional:
            chain = self._any_subsequence(optional, at)
            body = seq(body, opt(seq(COMMA, chain))) if body != EMPTY else opt(chain)
        return seq(lit("{"), SPACE, body, lit("}"), SPACE)

    def _member(self, name: str, schema: Any, at: str) -> Node:
        return seq(lit(_json_text(name)), SPACE, lit(":"), SPACE, self.visit(schema, at))

    def _any_subsequence(self, members: list[Node], at: str) -> Node:
        """Any non-empty run of ``members`` in order, comma-separated: each step a rule, so
        the grammar grows with the number of members, not with their subsets."""
        tail = members[-1]
        for member in reversed(members[:-1]):
            rest = self.grammar.rule(_hint(at) + "-rest", tail)
            tail = alt(seq(member, opt(seq(COMMA, rest))), rest)
        return tail

    def _array(self, schema: dict[str, Any], at: str) -> Node:
        prefix, rest = schema.get("prefixItems"), schema.get("items")
        if prefix is None and isinstance(rest, list):  # drafts before 2020-12
            prefix, rest = rest, schema.get("additionalItems")
        if not prefix and rest is None:
            rest = True  # a plain array: any items
        low, high = _counts(schema, "minItems", "maxItems", at)
        fixed = [
            self.visit(item, f"{at}/prefixItems/{i}")
            for i, item in enumerate((prefix or [])[:high])
        ]
        extra_low = max(0, low - len(fixed))
        if rest is False and extra_low:
            raise SchemaRefused("minItems", at, "asks for more items than the tuple allows")
        if rest is None or rest is False:  # after a tuple: write only what minItems needs
            extra_high: int | None = extra_low
        else:
            extra_high = None if high is None else high - len(fixed)
        items = _joined(fixed)
        if extra_high != 0:
            item = self.grammar.rule(_hint(at) + "-item", self.visit(rest or True, f"{at}/items"))
            more = rep(seq(COMMA, item), max(0, extra_low - 1), _minus_one(extra_high))
            if fixed:
                items = seq(items, rep(seq(COMMA, item), extra_low, extra_high))
            else:
                items = seq(item, more) if extra_low else opt(seq(item, more))
        return seq(lit("["), SPACE, items, lit("]"), SPACE)

    # --- scalars ----------------------------------------------------------------------------

    def _string(self, schema: dict[str, Any], at: str) -> Node:
        if "pattern" in schema:
            try:
                return quoted(pattern_node(str(schema["pattern"])))
            except PatternError as exc:
                raise SchemaRefused("pattern", at, str(exc)) from exc
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in FORMATS:
            return quoted(self.grammar.rule(fmt, FORMATS[fmt]))
        low, high = _counts(schema, "minLength", "maxLength", at)
        return quoted(rep(self.grammar.rule("char", STRING_CHAR), low, high))

    def _integer(self, schema: dict[str, Any], at: str) -> Node:
        low, high = _bounds(schema, at)
        if low is None and high is None:
            return INTEGER
        first = None if low is None else _to_int(low.value, ROUND_CEILING, low.exclusive, 1)
        last = None if high is None else _to_int(high.value, ROUND_FLOOR, high.exclusive, -1)
        if first is not None and last is not None and first > last:
            raise SchemaRefused("minimum", at, "no integer lies within the bounds")
        return integer_range(first, last)

    def _number(self, schema: dict[str, Any], at: str) -> Node:
        low, high = _bounds(schema, at)
        return NUMBER if low is None and high is None else decimal_range(low, high)

    def _any_json(self) -> AnyJson:
        if self._any is None:
            self._any = any_json(self.grammar)
        return self._any


# --- helpers --------------------------------------------------------------------------------


def _implied_type(schema: dict[str, Any]) -> str | None:
    """The type a schema without ``type`` is about, from its keywords (None: any value)."""
    return next((kind for kind, keys in _TYPE_HINTS if keys & schema.keys()), None)


def _bounds(schema: dict[str, Any], at: str) -> tuple[Bound | None, Bound | None]:
    """The tightest lower and upper bound; ``SchemaRefused`` when no number fits."""
    lows: list[Bound] = []
    highs: list[Bound] = []
    for key, into, exclusive_key in (
        ("minimum", lows, "exclusiveMinimum"),
        ("maximum", highs, "exclusiveMaximum"),
    ):
        flag = schema.get(exclusive_key)
        if key in schema:  # draft 4 spells an exclusive bound as a flag beside it
            into.append(Bound(_decimal(schema[key], key, at), flag is True))
        if flag is not None and not isinstance(flag, bool):
            into.append(Bound(_decimal(flag, exclusive_key, at), exclusive=True))
    low = max(lows, key=lambda b: (b.value, b.exclusive), default=None)
    high = min(highs, key=lambda b: (b.value, not b.exclusive), default=None)
    if low is not None and high is not None and not _admits_some(low, high):
        why = f"{low.value} is not below the maximum {high.value}: no number fits"
        raise SchemaRefused("minimum", at, why)
    if low is not None and low.value <= -_FAR:
        low = None
    if high is not None and high.value >= _FAR:
        high = None
    return low, high


def _admits_some(low: Bound, high: Bound) -> bool:
    if low.value == high.value:
        return not (low.exclusive or high.exclusive)
    return low.value < high.value


def _decimal(value: Any, key: str, at: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaRefused(key, at, f"{value!r} is not a number")
    exact = Decimal(str(value))
    if not exact.is_finite():
        raise SchemaRefused(key, at, f"{value!r} is not a finite number")
    return exact


def _to_int(value: Decimal, rounding: str, exclusive: bool, step: int) -> int:
    whole = value.to_integral_value(rounding=rounding)
    return int(whole) + step if exclusive and whole == value else int(whole)


def _counts(schema: dict[str, Any], low_key: str, high_key: str, at: str) -> tuple[int, int | None]:
    low, high = schema.get(low_key, 0), schema.get(high_key)
    if high is not None and low > high:
        raise SchemaRefused(low_key, at, f"{low} is above {high_key} {high}")
    return int(low), None if high is None else int(high)


def _minus_one(count: int | None) -> int | None:
    return None if count is None else max(0, count - 1)


def _joined(nodes: list[Node]) -> Node:
    out: list[Node] = []
    for node in nodes:
        out += [COMMA, node] if out else [node]
    return seq(*out)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _has_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _PYTHON_TYPES.get(kind, ()))


def _pointer(at: str, name: str) -> str:
    return f"{at}/properties/" + name.replace("~", "~0").replace("/", "~1")


def _hint(at: str) -> str:
    """A readable rule name from a schema location (``#/properties/a/items`` -> ``a-items``)."""
    skip = {"#", "properties", "prefixItems", "$defs", "definitions", "anyOf", "oneOf"}
    return "-".join(p for p in at.split("/") if p not in skip) or "root"
