"""What an llm job with a ``jsonSchema`` promises: a grammar that steers generation, and the
validator that decides whether an answer may be sent as done.

``SchemaContract.of`` runs before anything is downloaded or loaded: a schema that is not
valid JSON Schema (for its ``$schema`` draft, 2020-12 by default) or that the grammar cannot
express fails the job at once with ``SchemaRefused`` (not retryable, naming the keyword).
``violation`` is the verdict on one answer: None when it parses and validates (``jsonschema``
with its format checker), else the validator's own words on one line, with where in the
answer (``7 is greater than the maximum of 5 (at $.rating)``). Pure: no llama.cpp, no I/O;
the engine decides what to do with a verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError, best_match  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]

from engines.errors import SchemaRefused
from engines.schema_grammar import schema_gbnf

MAX_VIOLATION_CHARS: Final = 300  # the validator quotes the instance: a long string stays out


@dataclass(frozen=True)
class SchemaContract:
    gbnf: str
    validator: Any  # a jsonschema validator, built once for every answer of the job

    @classmethod
    def of(cls, schema: Any) -> SchemaContract:
        if not isinstance(schema, dict | bool):
            raise SchemaRefused(
                "jsonSchema", "#", f"a schema is an object or a boolean, not {schema!r}"
            )
        validator_class = validator_for(schema, default=Draft202012Validator)
        try:
            validator_class.check_schema(schema)
        except SchemaError as exc:
            path = [str(p) for p in exc.path]
            keyword = path[-1] if path else str(exc.validator)
            location = "#" + "".join(f"/{p}" for p in path[:-1])
            raise SchemaRefused(keyword, location, f"not valid JSON Schema: {exc.message}") from exc
        gbnf = schema_gbnf(schema)
        return cls(gbnf, validator_class(schema, format_checker=validator_class.FORMAT_CHECKER))

    def violation(self, text: str) -> str | None:
        """Why ``text`` is not an answer the schema accepts; None when it is."""
        try:
            instance = json.loads(text, parse_constant=_not_json)
        except ValueError as exc:
            return _clip(f"the answer is not JSON ({exc})")
        error = best_match(self.validator.iter_errors(instance))
        if error is None:
            return None
        where = f" (at {error.json_path})" if error.path else ""
        return _clip(str(error.message)) + where


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")  # Python's json reads NaN and Infinity


def _clip(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= MAX_VIOLATION_CHARS else line[: MAX_VIOLATION_CHARS - 3] + "..."
