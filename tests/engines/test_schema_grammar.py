"""The schema converter without a model: every answer its grammar can write validates
(checked by walking the grammar at random), llama.cpp parses every grammar it makes, each
keyword is treated as ``engines.schema_keywords`` says, and what it cannot express is
refused with the keyword and its place."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import llama_cpp
import pytest

from engines.errors import SchemaRefused
from engines.schema_grammar import schema_gbnf, schema_rules
from engines.schema_keywords import ANNOTATIONS, CHECKED, ENFORCED, REFUSED
from tests.engines.gbnf_oracle import admits, sample
from tests.support.models.tiny_llama import cached_tiny_llama

RATING = {"type": "integer", "minimum": 1, "maximum": 5}
NODE_DEFS = {
    "node": {
        "type": "object",
        "properties": {
            "v": RATING,
            "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
        },
        "required": ["v", "next"],
    }
}
SCHEMAS: dict[str, Any] = {
    "rating": RATING,
    "exclusive-int": {"type": "integer", "exclusiveMinimum": -3.5, "exclusiveMaximum": 12},
    "draft4-exclusive": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 3,
    },
    "number": {"type": "number", "minimum": -2.5, "maximum": 4.25},
    "open-unit": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "number-no-type": {"minimum": 10},
    "strings": {"type": "string", "minLength": 2, "maxLength": 5},
    "array": {"type": "array", "items": RATING, "minItems": 2, "maxItems": 4},
    "plain-array": {"type": "array"},
    "tuple": {"type": "array", "prefixItems": [{"type": "boolean"}, RATING], "minItems": 3},
    "old-tuple": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "array",
        "items": [{"const": 1}],
        "additionalItems": {"type": "null"},
        "minItems": 3,
    },
    "enum": {"type": "string", "enum": ["red", "green", 3, None]},
    "const": {"const": {"kind": "movie", "tags": ["a", "é\n"]}},
    "anyOf": {"anyOf": [{"type": "boolean"}, RATING, {"const": "none"}]},
    "oneOf-with-siblings": {"type": "integer", "oneOf": [{"maximum": 2}, {"minimum": 9}]},
    "type-list": {"type": ["integer", "null"], "minimum": 100, "maximum": 101},
    "pattern": {"type": "string", "pattern": "^[a-z]{3}-[0-9]{2,4}$"},
    "formats": {
        "type": "object",
        "properties": {
            "d": {"type": "string", "format": "date"},
            "t": {"type": "string", "format": "time"},
            "dt": {"type": "string", "format": "date-time"},
            "u": {"type": "string", "format": "uuid"},
        },
        "required": ["d", "t", "dt", "u"],
    },
    "object": {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": RATING},
        "required": ["b", "z"],
    },
    "closed-object": {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
        "required": ["b"],
        "additionalProperties": False,
    },
    "extra-members": {
        "type": "object",
        "properties": {"id": {"type": "integer"}},
        "additionalProperties": {"type": "string", "maxLength": 3},
    },
    "ref": {"$defs": {"r": RATING}, "type": "object", "properties": {"a": {"$ref": "#/$defs/r"}}},
    "ref-with-siblings": {"$defs": {"r": RATING}, "$ref": "#/$defs/r", "maximum": 3},
    "recursive": {"$defs": NODE_DEFS, "$ref": "#/$defs/node"},
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": RATING}, "required": ["a"]},
            {"properties": {"a": {"maximum": 2}, "b": {"type": "null"}}, "required": ["b"]},
        ]
    },
    "anyOf-with-false": {"anyOf": [False, {"type": "null"}]},
    "any": {},
    "true": True,
    "object-any": {"type": "object"},
}


@pytest.fixture(scope="module")
def vocab() -> Iterator[llama_cpp.llama_vocab_p]:
    model = llama_cpp.Llama(str(cached_tiny_llama()), vocab_only=True, verbose=False)
    try:
        yield llama_cpp.llama_model_get_vocab(model.model)
    finally:
        model.close()


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_answer_the_grammar_writes_validates(name: str) -> None:
    schema = SCHEMAS[name]
    rules = schema_rules(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    rng = random.Random(name)
    for _ in range(300):
        text = sample(rules["root"], rules, rng, max_repeat=2)
        answer = json.loads(text)
        errors = [e.message for e in validator.iter_errors(answer)]
        assert not errors, (text, errors)


@pytest.mark.parametrize("name", SCHEMAS)
def test_llama_cpp_parses_every_grammar(name: str, vocab: llama_cpp.llama_vocab_p) -> None:
    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab, schema_gbnf(SCHEMAS[name]).encode(), b"root"
    )
    assert sampler
    llama_cpp.llama_sampler_free(sampler)


def test_the_issues_rating_admits_exactly_one_to_five() -> None:
    rules = schema_rules({"type": "integer", "minimum": 1, "maximum": 5})
    for n in range(-20, 1000):
        assert admits(rules["root"], str(n), rules) == (1 <= n <= 5), n
    assert not admits(rules["root"], "1000000000000000", rules)


@pytest.mark.parametrize(
    ("schema", "keyword", "location", "why"),
    [
        ({"$ref": "https://example.com/s.json"}, "$ref", "#", "outside this schema"),
        ({"$ref": "#thing"}, "$ref", "#", "anchor names"),
        ({"properties": {"a": {"$ref": "#/nowhere"}}}, "$ref", "#/properties/a", "not resolve"),
        ({"$dynamicRef": "#meta"}, "$dynamicRef", "#", "dynamic references"),
        ({"items": {"$recursiveRef": "#"}}, "$recursiveRef", "#/items", "dynamic references"),
        ({"type": "string", "pattern": "^(?=a)"}, "pattern", "#", "lookahead"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum", "#", "no number fits"),
        ({"type": "integer", "minimum": 1.2, "maximum": 1.8}, "minimum", "#", "no integer"),
        ({"type": "number", "exclusiveMinimum": 1, "maximum": 1}, "minimum", "#", "no number"),
        ({"minLength": 4, "maxLength": 2}, "minLength", "#", "4 is above maxLength 2"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems", "#", "above maxItems"),
        ({"prefixItems": [True], "items": False, "minItems": 2}, "minItems", "#", "tuple"),
        ({"type": "string", "enum": [1, 2]}, "enum", "#", "no value of it has"),
        ({"properties": {"a": False}, "required": ["a"]}, "false", "#/properties/a", "no value"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "allOf", "#", "types"),
        ({"type": []}, "type", "#", "empty list"),
        (
            {"properties": {"a": True}, "required": ["b"], "additionalProperties": False},
            "required",
            "#",
            "`b` is required but `additionalProperties` is false",
        ),
        ({"anyOf": []}, "anyOf", "#", "at least one"),
        ({"anyOf": [False, False]}, "anyOf", "#", "every branch is `false`"),
    ],
)
def test_what_the_grammar_cannot_express_is_refused(
    schema: Any, keyword: str, location: str, why: str
) -> None:
    with pytest.raises(SchemaRefused) as err:
        schema_gbnf(schema)
    assert (err.value.keyword, err.value.location) == (keyword, location)
    assert str(err.value).startswith(f"jsonSchema cannot be enforced: `{keyword}` at {location}: ")
    assert why in str(err.value)
    assert not err.value.retryable and err.value.reason == "bad_input"


def test_a_schema_that_unfolds_forever_is_refused_not_a_crash() -> None:
    endless = {"properties": {"a": True}, "anyOf": [{"$ref": "#"}, {"required": ["a"]}]}
    with pytest.raises(SchemaRefused, match=r"the schema nests deeper than 100$") as err:
        schema_gbnf(endless)
    assert err.value.keyword == "$ref" and err.value.location.startswith("#/anyOf/0/anyOf/0/")


# --- the keyword list is what the converter does ----------------------------------------------

BASE: dict[str, Any] = {"type": "array", "items": {"type": "integer"}}
# A value for each keyword, added to a schema it applies to.
SAMPLES: dict[str, tuple[dict[str, Any], Any]] = {
    "type": ({}, "integer"),
    "enum": ({}, [1, 2]),
    "const": ({}, 1),
    "properties": ({"type": "object"}, {"a": {"type": "integer"}}),
    "required": ({"type": "object"}, ["a"]),
    "additionalProperties": ({"type": "object", "properties": {"a": True}}, {"type": "null"}),
    "items": ({"type": "array"}, {"type": "null"}),
    "prefixItems": ({"type": "array"}, [{"type": "null"}]),
    "additionalItems": ({"type": "array", "items": [True]}, {"type": "null"}),
    "minItems": (BASE, 1),
    "maxItems": (BASE, 3),
    "minLength": ({"type": "string"}, 1),
    "maxLength": ({"type": "string"}, 3),
    "pattern": ({"type": "string"}, "^a$"),
    "format": ({"type": "string"}, "date"),
    "minimum": ({"type": "integer"}, 1),
    "maximum": ({"type": "integer"}, 1),
    "exclusiveMinimum": ({"type": "integer"}, 1),
    "exclusiveMaximum": ({"type": "integer"}, 1),
    "anyOf": ({}, [{"type": "null"}]),
    "oneOf": ({}, [{"type": "null"}]),
    "allOf": ({}, [{"type": "null"}]),
    "$ref": ({"$defs": {"n": {"type": "null"}}}, "#/$defs/n"),
    "multipleOf": ({"type": "integer"}, 3),
    "uniqueItems": (BASE, True),
    "contains": (BASE, {"const": 1}),
    "minContains": (BASE, 1),
    "maxContains": (BASE, 1),
    "minProperties": ({"type": "object"}, 1),
    "maxProperties": ({"type": "object"}, 1),
    "patternProperties": ({"type": "object"}, {"^a": {"type": "null"}}),
    "propertyNames": ({"type": "object"}, {"maxLength": 2}),
    "dependentRequired": ({"type": "object"}, {"a": ["b"]}),
    "dependentSchemas": ({"type": "object"}, {"a": {"required": ["b"]}}),
    "dependencies": ({"type": "object"}, {"a": ["b"]}),
    "unevaluatedProperties": ({"type": "object"}, False),
    "unevaluatedItems": (BASE, False),
    "not": ({"type": "integer"}, {"const": 1}),
    "if": ({"type": "integer"}, {"minimum": 3}),
    "then": ({"type": "integer"}, {"maximum": 3}),
    "else": ({"type": "integer"}, {"maximum": 3}),
    "$dynamicRef": ({}, "#meta"),
    "$recursiveRef": ({}, "#"),
}


def test_every_listed_keyword_has_a_sample() -> None:
    assert SAMPLES.keys() == ENFORCED | CHECKED | REFUSED
    assert not (ENFORCED & CHECKED) and not (REFUSED & (ENFORCED | CHECKED))
    assert not (ANNOTATIONS & SAMPLES.keys())


@pytest.mark.parametrize("keyword", sorted(ENFORCED))
def test_an_enforced_keyword_changes_the_grammar(keyword: str) -> None:
    base, value = SAMPLES[keyword]
    assert schema_gbnf({**base, keyword: value}) != schema_gbnf(base)


@pytest.mark.parametrize("keyword", sorted(CHECKED))
def test_a_checked_keyword_leaves_the_grammar_alone(keyword: str) -> None:
    base, value = SAMPLES[keyword]
    assert schema_gbnf({**base, keyword: value}) == schema_gbnf(base)


@pytest.mark.parametrize("keyword", sorted(REFUSED))
def test_a_refused_keyword_is_refused(keyword: str) -> None:
    base, value = SAMPLES[keyword]
    with pytest.raises(SchemaRefused, match=f"`\\{keyword}`"):
        schema_gbnf({**base, keyword: value})


def test_annotations_leave_the_grammar_alone() -> None:
    annotated = {**RATING, "title": "t", "description": "d", "examples": [3], "default": 3}
    assert schema_gbnf(annotated) == schema_gbnf(RATING)
    pure_ref = {"$defs": {"r": RATING}, "$ref": "#/$defs/r", "description": "just a ref"}
    assert schema_gbnf(pure_ref).splitlines()[0] == "root ::= r"
