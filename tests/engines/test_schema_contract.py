"""The schema contract without a model: a schema that is not JSON Schema is refused with its
keyword, an answer gets the validator's verdict in one line, and both failures reach the
studio as ``retryable: false``; the operator guide lists the keywords as the code treats
them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engines.errors import InvalidOutput, SchemaRefused
from engines.job_failure import job_failed
from engines.schema_contract import MAX_VIOLATION_CHARS, SchemaContract
from engines.schema_keywords import CHECKED, ENFORCED, REFUSED

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
RATED = {
    "type": "object",
    "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["rating"],
}


@pytest.mark.parametrize(
    ("schema", "keyword", "location"),
    [
        ({"type": "integr"}, "type", "#"),
        ({"properties": {"a": {"type": 5}}}, "type", "#/properties/a"),
        ({"type": "string", "pattern": "(?<"}, "pattern", "#"),
        ({"minimum": "5"}, "minimum", "#"),
    ],
)
def test_a_schema_that_is_not_json_schema_is_refused(
    schema: Any, keyword: str, location: str
) -> None:
    with pytest.raises(SchemaRefused) as err:
        SchemaContract.of(schema)
    assert (err.value.keyword, err.value.location) == (keyword, location)
    assert "not valid JSON Schema: " in str(err.value)
    failed = job_failed("job-1", err.value)
    assert (failed.retryable, failed.reason) == (False, "bad_input")


@pytest.mark.parametrize("schema", [5, "object", [], False])
def test_a_schema_that_admits_nothing_or_is_no_schema_is_refused(schema: Any) -> None:
    with pytest.raises(SchemaRefused) as err:
        SchemaContract.of(schema)
    assert not err.value.retryable and err.value.location == "#"


def test_the_schemas_own_draft_is_used() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "integer",
        "minimum": 1,
        "exclusiveMinimum": True,
        "maximum": 3,
    }
    contract = SchemaContract.of(draft4)
    assert contract.violation("2") is None
    assert contract.violation("1") == "1 is less than or equal to the minimum of 1"
    assert contract.gbnf.startswith("root ::= [2-3]")


@pytest.mark.parametrize(
    ("schema", "text", "verdict"),
    [
        (
            {"type": "integer", "minimum": 1, "maximum": 5},
            "7",
            "7 is greater than the maximum of 5",
        ),
        (RATED, '{"rating": 7}', "7 is greater than the maximum of 5 (at $.rating)"),
        (RATED, '{"rating": 3} ', None),
        ({"type": "string", "format": "date"}, '"2023-02-30"', "'2023-02-30' is not a 'date'"),
        ({"type": "string", "format": "email"}, '"nobody"', "'nobody' is not a 'email'"),
        ({"uniqueItems": True}, "[1, 1]", "[1, 1] has non-unique elements"),
    ],
)
def test_an_answer_gets_the_validators_verdict(schema: Any, text: str, verdict: str | None) -> None:
    assert SchemaContract.of(schema).violation(text) == verdict


def test_one_of_is_exactly_one() -> None:
    contract = SchemaContract.of({"oneOf": [{"minimum": 0}, {"maximum": 9}]})
    assert contract.violation("5") == "5 is valid under each of {'maximum': 9}, {'minimum': 0}"
    assert contract.violation("10") is None


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ('{"rating": 1', "the answer is not JSON (Expecting ',' delimiter"),
        ("", "the answer is not JSON (Expecting value"),
        ("NaN", "the answer is not JSON (NaN is not JSON)"),
        ('{"rating": 1}{}', "the answer is not JSON (Extra data"),
    ],
)
def test_an_answer_that_is_not_json(text: str, starts: str) -> None:
    verdict = SchemaContract.of(RATED).violation(text)
    assert verdict is not None and verdict.startswith(starts)


def test_a_long_verdict_is_clipped_to_one_line() -> None:
    contract = SchemaContract.of({"type": "string", "maxLength": 3})
    verdict = contract.violation('"' + "line\\n" * 200 + '"')
    assert verdict is not None
    assert len(verdict) == MAX_VIOLATION_CHARS and verdict.endswith("...")
    assert "\n" not in verdict


def test_an_invalid_answer_fails_the_job_for_good() -> None:
    failed = job_failed("job-1", InvalidOutput("7 is greater than the maximum of 5"))
    assert failed.error == "output does not satisfy jsonSchema: 7 is greater than the maximum of 5"
    assert (failed.retryable, failed.reason) == (False, "invalid_output")


def test_the_operator_guide_lists_the_keywords_as_the_code_treats_them() -> None:
    section = GUIDE.read_text().split("### LLM answers with a `jsonSchema`", 1)[1]
    rows = {
        m.group(1): set(re.findall(r"`([^`]+)`", m.group(2)))
        for m in re.finditer(r"^\| ([a-z ]+) \| (.+) \|$", section, re.M)
    }
    assert rows["enforced while generating"] == ENFORCED
    assert rows["only checked after generating"] == CHECKED
    assert rows["refused"] == REFUSED
