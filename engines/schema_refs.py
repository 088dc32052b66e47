"""Local ``$ref`` resolution and ``allOf`` merging for the schema converter.

``$ref`` is followed only inside the schema itself (``#`` and ``#/json/pointer``); nothing is
fetched, and a remote or anchor reference, or one that does not resolve, is refused with
``SchemaRefused``. ``merge`` folds ``allOf`` parts (and a ``$ref`` with constraints beside
it) into one schema for the grammar: properties are combined, ``required`` is the union,
lower bounds take the highest, upper bounds the lowest, types intersect. Any other keyword
both parts set differently keeps the first part's value; the validator still checks the
whole schema after generation, so that is where the rest is enforced. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote

from engines.errors import SchemaRefused
from engines.schema_keywords import ANNOTATIONS

_LOWER_BOUNDS: Final = frozenset(
    {"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"}
)
_UPPER_BOUNDS: Final = frozenset(
    {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"}
)
MAX_MERGE_DEPTH: Final = 32


def constrains(schema: dict[str, Any], *ignoring: str) -> bool:
    """Whether ``schema`` has a keyword other than annotations and ``ignoring``."""
    return any(k not in ANNOTATIONS and k not in ignoring for k in schema)


class SchemaRefs:
    """The root schema's references and merges."""

    def __init__(self, root: Any) -> None:
        self._root = root

    def resolve(self, ref: Any, at: str) -> tuple[str, Any]:
        """(canonical pointer, target) of a ``$ref`` found at ``at``."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaRefused(
                "$ref", at, f"{ref!r} is outside this schema (only `#/...` is followed)"
            )
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            raise SchemaRefused("$ref", at, f"{ref!r}: anchor names are not supported")
        target = self._root
        for token in fragment.split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise SchemaRefused("$ref", at, f"{ref!r} does not resolve in this schema")
        return "#" + fragment, target

    def merge(self, parts: list[Any], at: str, depth: int = 0) -> Any:
        """One schema asking what all ``parts`` ask (as far as the grammar goes); ``False``
        when a part is ``false``."""
        out: dict[str, Any] = {}
        for raw in parts:
            part = self._flatten(raw, at, depth)
            if part is False:
                return False
            if not isinstance(part, dict):
                continue  # true, or garbage the validator already refused
            for key, value in part.items():
                if key not in out:
                    out[key] = value
                elif out[key] != value:
                    out[key] = _combine(key, out[key], value, at)
        return out

    def _flatten(self, part: Any, at: str, depth: int) -> Any:
        if depth > MAX_MERGE_DEPTH:
            raise SchemaRefused("allOf", at, "`$ref`/`allOf` nest too deep to merge")
        if not isinstance(part, dict):
            return part
        if "$ref" in part:
            _, target = self.resolve(part["$ref"], at)
            rest = {k: v for k, v in part.items() if k != "$ref"}
            return self.merge([target, rest], at, depth + 1)
        if "allOf" in part:
            rest = {k: v for k, v in part.items() if k != "allOf"}
            return self.merge([rest, *part["allOf"]], at, depth + 1)
        return part


def _combine(key: str, first: Any, second: Any, at: str) -> Any:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (first, second))
    if key == "properties" and isinstance(first, dict) and isinstance(second, dict):
        both = {n: {"allOf": [first[n], s]} for n, s in second.items() if n in first}
        return {**first, **second, **both}
    if key == "required" and isinstance(first, list) and isinstance(second, list):
        return list(dict.fromkeys([*first, *second]))
    if key in _LOWER_BOUNDS and numbers:
        return max(first, second)
    if key in _UPPER_BOUNDS and numbers:
        return min(first, second)
    if key == "type":
        return _common_types(first, second, at)
    return first


def _common_types(first: Any, second: Any, at: str) -> list[str]:
    a = [first] if isinstance(first, str) else list(first)
    b = [second] if isinstance(second, str) else list(second)

    def within(t: str, others: list[str]) -> bool:
        return t in others or (t == "integer" and "number" in others)

    common = [t for t in a if within(t, b)] + [t for t in b if t not in a and within(t, a)]
    if not common:
        raise SchemaRefused("allOf", at, f"its parts ask for types {a} and {b}: no value fits")
    return common
