"""``jsonSchema`` answers and text endings on the real llama engine (the tiny random-weight
GGUF, so the grammar does all the work): every answer that comes back done validates, an
answer that does not is generated again once and then fails for good, a schema the engine
cannot use fails before the model is fetched, and a cut inside a character drops it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from engines.base import JobContext, JsonResult
from engines.errors import InvalidOutput, SchemaRefused
from engines.job_failure import job_failed
from engines.llama import LlamaEngine
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelFile, ModelSource
from tests.support.models.fixtures import ModelServer, model_server
from tests.support.models.tiny_llama import cached_tiny_llama, write_tiny_llama

__all__ = ["model_server"]  # a fixture, imported for pytest

SEEDS = range(20)
RATING = {"type": "integer", "minimum": 1, "maximum": 5}
SCORE = {"type": "number", "minimum": 0, "maximum": 1}
SCHEMAS: dict[str, Any] = {
    "integer": RATING,
    "integer-exclusive": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 120},
    "number": {"type": "number", "minimum": -2.5, "maximum": 4.25},
    "number-exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "nested-bounds": {
        "type": "object",
        "properties": {
            "rating": RATING,
            "score": SCORE,
            "votes": {"type": "integer", "minimum": 0},
        },
        "required": ["rating", "score"],
        "additionalProperties": False,
    },
    "string-length": {"type": "string", "minLength": 2, "maxLength": 6},
    "array-size": {"type": "array", "items": RATING, "minItems": 2, "maxItems": 4},
    "enum": {"enum": ["red", "green", "blue"]},
    "const": {"const": {"kind": "movie", "v": 1}},
    "anyOf": {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 10}, {"const": "x"}]},
    "pattern": {"type": "string", "pattern": "^[a-z]{3}-[0-9]{2,4}$"},
    "date": {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}},
    "ref": {
        "$defs": {"rating": RATING},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/rating"}, "b": {"$ref": "#/$defs/rating"}},
        "required": ["a", "b"],
    },
}
# uniqueItems is only checked: three picks out of 0..2 are rarely all different.
UNIQUE_TRIPLE = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 2},
    "minItems": 3,
    "maxItems": 3,
    "uniqueItems": True,
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LlamaEngine]:
    eng = LlamaEngine(tmp_path / "models")
    write_tiny_llama(eng.models_root / "llm" / "tiny.gguf")
    try:
        yield eng
    finally:
        eng.close()


def _source(*files: ModelFile) -> ModelSource:
    defaults = ModelCliDefaults(cfg_scale=1.0, steps=8, width=512, height=512)
    return ModelSource(engine="llama-cpp", files=list(files), cli_defaults=defaults)


class Job:
    """One llm job on the engine, with the lines it logged."""

    def __init__(self, engine: LlamaEngine, task: LlmTask, source: ModelSource | None = None):
        self.logs: list[str] = []
        self.ctx = JobContext(
            job_id="job-1",
            model="tiny",
            task=task,
            model_source=source or _source(),
            models_root=engine.models_root,
            log=lambda level, line: self.logs.append(f"{level}: {line}"),
            cancelled=threading.Event(),
        )
        self.engine = engine

    def run(self) -> dict[str, Any]:
        result = self.engine.run(self.ctx)
        assert isinstance(result, JsonResult)
        value: dict[str, Any] = result.value
        return value


def _task(schema: Any, seed: int | None = None, **params: Any) -> LlmTask:
    params.setdefault("temperature", 1.0)
    params.setdefault("max_tokens", 120)
    return LlmTask(
        messages=[ChatMessage("user", "answer in JSON")], json_schema=schema, seed=seed, **params
    )


def _validate(value: dict[str, Any], schema: Any) -> None:
    answer = json.loads(value["choices"][0]["message"]["content"])
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.validate(answer, schema, format_checker=checker)


def _retries(logs: list[str]) -> list[str]:
    return [line for line in logs if "does not satisfy jsonSchema" in line]


def test_the_issues_rating_stays_within_one_to_five(engine: LlamaEngine) -> None:
    task = LlmTask(
        messages=[ChatMessage("user", "Rate this movie from 1 to 5")],
        json_schema=RATING,
        max_tokens=16,
        temperature=0.0,
    )
    value = Job(engine, task).run()
    assert value["choices"][0]["finish_reason"] == "stop"
    assert json.loads(value["choices"][0]["message"]["content"]) in range(1, 6)
    for seed in (1, 2, 3):
        job = Job(engine, _task(RATING, seed, max_tokens=16))
        assert json.loads(job.run()["choices"][0]["message"]["content"]) in range(1, 6)
        assert not _retries(job.logs)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCHEMAS)
def test_every_answer_validates_on_twenty_seeds(engine: LlamaEngine, name: str) -> None:
    schema = SCHEMAS[name]
    for seed in SEEDS:
        job = Job(engine, _task(schema, seed))
        value = job.run()
        assert value["choices"][0]["finish_reason"] == "stop", seed
        _validate(value, schema)
        assert not _retries(job.logs), "the grammar alone kept the answer valid"


@pytest.mark.slow
def test_an_answer_breaking_a_checked_keyword_is_never_done(engine: LlamaEngine) -> None:
    failures = 0
    for seed in SEEDS:
        job = Job(engine, _task(UNIQUE_TRIPLE, seed, max_tokens=30))
        try:
            value = job.run()
        except InvalidOutput as exc:
            failures += 1
            assert str(exc).startswith("output does not satisfy jsonSchema: [")
            assert str(exc).endswith("] has non-unique elements")
            failed = job_failed("job-1", exc)
            assert (failed.retryable, failed.reason) == (False, "invalid_output")
            (retry,) = _retries(job.logs)
            assert retry.startswith("warn: answer does not satisfy jsonSchema: [")
            assert retry.endswith(f"; generating again with seed {seed + 1} instead of {seed}")
        else:
            _validate(value, UNIQUE_TRIPLE)
    assert failures, "the random model repeats itself: some jobs must have failed"


def test_a_retry_with_another_seed_can_rescue_the_answer(engine: LlamaEngine) -> None:
    schema = {**UNIQUE_TRIPLE, "items": {"type": "integer", "minimum": 0, "maximum": 9}}
    schema.update(minItems=2, maxItems=2)
    rescued = []
    for seed in range(40):
        job = Job(engine, _task(schema, seed, max_tokens=30))
        try:
            value = job.run()
        except InvalidOutput:
            continue
        _validate(value, schema)
        if _retries(job.logs):
            rescued.append(seed)
    assert rescued, "some first answer repeats a number and its retry does not"


def test_greedy_decoding_is_not_generated_again(engine: LlamaEngine) -> None:
    job = Job(engine, _task(UNIQUE_TRIPLE, max_tokens=30, temperature=0.0))
    with pytest.raises(InvalidOutput, match=r"has non-unique elements$"):
        job.run()
    (line,) = _retries(job.logs)
    assert line.endswith(
        "; not generated again: temperature 0 gives the same answer for every seed"
    )


def test_an_answer_cut_by_max_tokens_says_so(engine: LlamaEngine) -> None:
    job = Job(engine, _task({"type": "string", "minLength": 20, "maxLength": 30}, 1, max_tokens=4))
    with pytest.raises(InvalidOutput) as err:
        job.run()
    assert str(err.value).startswith("output does not satisfy jsonSchema: the answer is not JSON (")
    assert str(err.value).endswith("; the answer was cut at the token budget of 4 tokens")
    assert len(_retries(job.logs)) == 1


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}},
            "jsonSchema cannot be enforced: `$ref` at #/properties/a: '#/nowhere' does not "
            "resolve in this schema",
        ),
        (
            {"type": "integer", "minimum": 5, "maximum": 1},
            "jsonSchema cannot be enforced: `minimum` at #: 5 is not below the maximum 1: no "
            "number fits",
        ),
        (
            {"type": "intger"},
            "jsonSchema cannot be enforced: `type` at #: not valid JSON Schema: 'intger' is not "
            "valid under any of the given schemas",
        ),
    ],
)
def test_a_schema_the_engine_cannot_use_fails_before_the_model_is_fetched(
    tmp_path: Path, model_server: ModelServer, schema: Any, message: str
) -> None:
    engine = LlamaEngine(tmp_path / "models")
    try:
        source = _source(model_server.publish(cached_tiny_llama(), name="tiny.gguf"))
        with pytest.raises(SchemaRefused) as err:
            Job(engine, _task(schema), source).run()
    finally:
        engine.close()
    assert str(err.value) == message
    failed = job_failed("job-1", err.value)
    assert (failed.retryable, failed.reason) == (False, "bad_input")
    assert model_server.requests == [] and engine.model_loads == 0


def test_a_cut_inside_a_character_drops_it_and_says_so(engine: LlamaEngine) -> None:
    answers: list[str] = []
    drops: list[tuple[int, str]] = []
    for budget in range(1, 9):
        job = Job(engine, _task(None, 0, max_tokens=budget, temperature=0.0))
        answers.append(job.run()["choices"][0]["message"]["content"])
        drops += [(budget, line) for line in job.logs if "incomplete UTF-8" in line]
    assert drops, "the tiny model's greedy answer splits a character within 8 tokens"
    for budget, line in drops:
        answer = answers[budget - 1]
        assert line.startswith("warn: dropped ")
        assert line.endswith(
            " of an incomplete UTF-8 character at the end of the answer (token budget)"
        )
        assert "\ufffd" not in answer, "nothing broken at the end, and nothing before it"
        assert answers[budget].startswith(answer), "only the incomplete character was dropped"
