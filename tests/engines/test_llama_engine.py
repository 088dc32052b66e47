"""The llama engine on a real (tiny, random-weight) GGUF through real llama-cpp-python:
files fetched over HTTP by provisioning, the model's own template, real token counts,
grammar-constrained JSON, model reuse between jobs and clear failures (protocol.md §9.5)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import llama_cpp
import pytest

from engines.base import JobContext, JsonResult
from engines.cpu_threads import THREADS_ENV, available_cores
from engines.errors import EngineError, SchemaRefused, UnsupportedTask
from engines.gguf_meta import GgufFormatError, iter_metadata, training_context
from engines.llama import ENGINE_CLASS, LlamaEngine
from engines.llama_model import LoadedModel
from engines.loader import create_engine
from protocol.tasks import (
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelFile,
    ModelSource,
)
from tests.support.models.fixtures import ModelServer, model_server
from tests.support.models.tiny_llama import BOS, EOS, cached_tiny_llama, write_tiny_llama

__all__ = ["model_server"]  # a fixture, imported for pytest

BOOL_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
ENUM_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}

Event = tuple[str, int, int, str]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LlamaEngine]:
    eng = LlamaEngine(tmp_path / "models")
    try:
        yield eng
    finally:
        eng.close()


def _source(
    *files: ModelFile, context_size: int | None = None, kwargs: dict[str, Any] | None = None
) -> ModelSource:
    defaults = ModelCliDefaults(
        cfg_scale=1.0,
        steps=8,
        width=512,
        height=512,
        context_size=context_size,
        chat_template_kwargs=kwargs,
    )
    return ModelSource(engine="llama-cpp", files=list(files), cli_defaults=defaults)


def _chat(content: str = "hello", **params: Any) -> LlmTask:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 16)
    return LlmTask(messages=[ChatMessage("user", content)], **params)


def _run(
    engine: LlamaEngine,
    task: LlmTask | ImageTask,
    source: ModelSource,
    *,
    model: str = "tiny",
    events: list[Event] | None = None,
    cancelled: threading.Event | None = None,
) -> dict[str, Any]:
    def progress(phase: str, step: int, total: int, message: str) -> None:
        if events is not None:
            events.append((phase, step, total, message))

    ctx = JobContext(
        job_id="job-1",
        model=model,
        task=task,
        model_source=source,
        models_root=engine.models_root,
        progress=progress,
        cancelled=cancelled or threading.Event(),
    )
    result = engine.run(ctx)
    assert isinstance(result, JsonResult)
    value: dict[str, Any] = result.value
    return value


def _local_model(engine: LlamaEngine, name: str = "tiny.gguf", **params: Any) -> Path:
    return write_tiny_llama(engine.models_root / "llm" / name, **params)


def _newest(engine: LlamaEngine) -> LoadedModel:
    """The most recently used loaded model."""
    loaded = engine._warm.peek(engine.resident()[-1].load_key)
    assert loaded is not None
    return loaded


def _content(value: dict[str, Any]) -> str:
    content: str = value["choices"][0]["message"]["content"]
    return content


# --- capabilities -------------------------------------------------------------------------------


def test_only_the_wildcard_is_advertised_without_local_models(engine: LlamaEngine) -> None:
    assert engine.advertised_models() == {"llm": ["llama-cpp:*"]}


def test_local_stems_are_advertised_case_insensitively(engine: LlamaEngine) -> None:
    llm = engine.models_root / "llm"
    llm.mkdir(parents=True)
    for name in ("b-model.gguf", "A-Model.GGUF", "notes.txt", "half.part"):
        (llm / name).write_bytes(b"x")
    (llm / "dir.gguf").mkdir()
    assert engine.advertised_models() == {"llm": ["A-Model", "b-model", "llama-cpp:*"]}


def test_library_version_and_loader_entry_point(tmp_path: Path) -> None:
    assert ENGINE_CLASS is LlamaEngine
    eng = create_engine("llama", tmp_path)
    try:
        assert isinstance(eng, LlamaEngine)
        assert eng.name == "llama"
        assert eng.library_versions() == {"llama-cpp-python": llama_cpp.__version__}
        assert eng.model_loads == 0
    finally:
        eng.close()


# --- refusals before any model work -------------------------------------------------------------


def test_a_non_llm_task_is_unsupported(engine: LlamaEngine) -> None:
    with pytest.raises(UnsupportedTask) as err:
        _run(engine, ImageTask(prompt="a fox"), _source())
    assert str(err.value) == "llama engine cannot serve image tasks"
    assert not err.value.retryable


def test_a_missing_local_model_names_the_directory(engine: LlamaEngine) -> None:
    with pytest.raises(EngineError) as err:
        _run(engine, _chat(), _source(), model="nope")
    llm_dir = engine.models_root / "llm"
    assert str(err.value) == (
        f"model `nope` not found in {llm_dir} and the offer's modelSource listed no files "
        "to download"
    )


def test_a_source_without_a_gguf_is_refused_before_downloading(
    engine: LlamaEngine, model_server: ModelServer
) -> None:
    weights = ModelFile(role="model", url=f"{model_server.base_url}/w.bin", filename="w.bin")
    with pytest.raises(EngineError) as err:
        _run(engine, _chat(), _source(weights), model="org/model")
    assert str(err.value) == "llama modelSource for `org/model` contained no .gguf file"
    assert model_server.requests == []


# --- real generation ----------------------------------------------------------------------------


def _expected_prompt_tokens(path: Path, prompt: str, add_bos: bool) -> list[int]:
    vocab_only = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        return vocab_only.tokenize(prompt.encode(), add_bos=add_bos, special=True)
    finally:
        vocab_only.close()


def test_a_chat_job_downloads_the_model_and_answers(
    engine: LlamaEngine, model_server: ModelServer
) -> None:
    mmproj = model_server.publish(cached_tiny_llama(), name="mmproj.gguf", role="vision")
    model = model_server.publish(cached_tiny_llama(), name="Tiny-Chat.GGUF")
    events: list[Event] = []
    value = _run(engine, _chat("hello", max_tokens=8), _source(mmproj, model), events=events)

    local = engine.models_root / "llm" / "Tiny-Chat.GGUF"
    assert local.is_file()
    prompt = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    expected = _expected_prompt_tokens(local, prompt, add_bos=True)
    assert expected[0] == 1, "the model asks for BOS and the template did not write it"
    assert value["object"] == "chat.completion"
    assert value["model"] == "tiny"
    (choice,) = value["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert "reasoning_content" not in choice["message"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = value["usage"]
    assert usage["prompt_tokens"] == len(expected)
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert isinstance(value["elapsed_ms"], int) and value["elapsed_ms"] >= 0

    phases = [e[0] for e in events]
    assert phases.index("downloading") < phases.index("loading") < phases.index("generating")
    assert ("downloading", model.approx_bytes, model.approx_bytes, "Tiny-Chat.GGUF") in events
    assert events[phases.index("loading")] == ("loading", 0, 1, "Tiny-Chat.GGUF")
    assert ("loading", 1, 1, "Tiny-Chat.GGUF") in events
    steps = [e[1] for e in events if e[0] == "generating"]
    assert events[phases.index("generating")] == ("generating", 0, 8, "")
    assert steps[-1] == usage["completion_tokens"]
    assert steps == sorted(set(steps)), "token counts only grow"


def test_token_progress_is_paced_and_ends_on_the_last_token(engine: LlamaEngine) -> None:
    _local_model(engine)
    every: list[Event] = []
    engine.progress_interval_s = 0.0
    value = _run(engine, _chat(max_tokens=40), _source(), events=every)
    tokens = value["usage"]["completion_tokens"]
    assert tokens >= 20
    assert [e[1] for e in every if e[0] == "generating"] == list(range(tokens + 1))

    # The tiny model makes its tokens in a few ms: at the default pace (0.1 s), the first
    # report and the last get through and few in between.
    paced: list[Event] = []
    engine.progress_interval_s = 0.1
    again = _run(engine, _chat(max_tokens=40), _source(), events=paced)
    assert again["usage"]["completion_tokens"] == tokens
    steps = [e[1] for e in paced if e[0] == "generating"]
    assert steps[0] == 0 and steps[-1] == tokens
    assert len(steps) < tokens // 2


def test_the_budget_runs_out_as_length(engine: LlamaEngine) -> None:
    _local_model(engine)
    value = _run(engine, _chat(max_tokens=5), _source())
    assert value["choices"][0]["finish_reason"] == "length"
    assert value["usage"]["completion_tokens"] == 5


def test_max_tokens_zero_still_generates_one_token(engine: LlamaEngine) -> None:
    _local_model(engine)
    value = _run(engine, _chat(max_tokens=0), _source())
    assert value["usage"]["completion_tokens"] == 1


def test_greedy_decoding_is_deterministic(engine: LlamaEngine) -> None:
    _local_model(engine)
    first = _run(engine, _chat("the answer", max_tokens=24), _source())
    other = _run(engine, _chat("something else", max_tokens=24), _source())
    again = _run(engine, _chat("the answer", max_tokens=24), _source())
    assert _content(first) == _content(again)
    assert first["usage"] == again["usage"]
    assert other["usage"]["prompt_tokens"] != first["usage"]["prompt_tokens"]


def test_sampling_is_seeded(engine: LlamaEngine) -> None:
    _local_model(engine)
    runs = [
        _content(_run(engine, _chat(max_tokens=24, temperature=1.0, seed=seed), _source()))
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_a_stop_string_cuts_the_answer(engine: LlamaEngine) -> None:
    _local_model(engine)
    full = _content(_run(engine, _chat(max_tokens=32), _source()))
    # Two visible characters from the middle of the greedy answer.
    stop = next(
        full[i : i + 2]
        for i in range(len(full) // 2, len(full) - 1)
        if full[i : i + 2].isprintable() and not any(c.isspace() for c in full[i : i + 2])
    )
    value = _run(engine, _chat(max_tokens=32, stop=[stop]), _source())
    assert _content(value) == full[: full.index(stop)].strip()
    assert value["choices"][0]["finish_reason"] == "stop"
    assert value["usage"]["completion_tokens"] < 32


@pytest.mark.parametrize("schema", [BOOL_SCHEMA, ENUM_SCHEMA], ids=["boolean", "enum"])
@pytest.mark.parametrize(
    ("temperature", "seed"),
    [(0.0, None), (1.0, 1), (1.0, 2), (1.0, 3)],
    ids=["greedy", "sampled-1", "sampled-2", "sampled-3"],
)
def test_json_schema_output_parses_and_validates(
    engine: LlamaEngine, schema: dict[str, Any], temperature: float, seed: int | None
) -> None:
    _local_model(engine)
    task = _chat("answer in JSON", max_tokens=200, temperature=temperature, seed=seed)
    task.json_schema = schema
    value = _run(engine, task, _source())
    assert value["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(_content(value)), schema)


def test_an_unusable_json_schema_is_a_clear_error(engine: LlamaEngine) -> None:
    _local_model(engine)
    task = _chat()
    task.json_schema = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
    with pytest.raises(SchemaRefused, match="jsonSchema cannot be enforced: `\\$ref`") as err:
        _run(engine, task, _source())
    assert not err.value.retryable, "the input is wrong, not the worker"


def test_a_prompt_that_overflows_the_context_is_refused(engine: LlamaEngine) -> None:
    _local_model(engine)
    with pytest.raises(EngineError) as err:
        _run(engine, _chat("hello " * 80), _source(context_size=64))
    assert str(err.value).startswith("prompt is ")
    assert str(err.value).endswith(
        " tokens but the context holds 64; raise contextSize or shorten the prompt"
    )


def test_the_context_is_capped_by_the_training_context(engine: LlamaEngine) -> None:
    _local_model(engine, n_ctx_train=128)
    with pytest.raises(EngineError, match="the context holds 128;"):
        _run(engine, _chat("hello " * 200), _source(context_size=4096))


def test_cancelling_mid_generation_fails_the_job(engine: LlamaEngine) -> None:
    _local_model(engine)
    engine.progress_interval_s = 0.0  # a report per token, to cancel at the third
    cancelled = threading.Event()

    class CancelAtThree(list[Event]):
        def append(self, event: Event) -> None:
            super().append(event)
            if event[:2] == ("generating", 3):
                cancelled.set()

    events = CancelAtThree()
    with pytest.raises(EngineError, match=r"^cancelled$"):
        _run(engine, _chat(max_tokens=50), _source(), events=events, cancelled=cancelled)
    assert max(e[1] for e in events if e[0] == "generating") == 3
    # The engine is still usable afterwards.
    assert _run(engine, _chat(max_tokens=2), _source())["usage"]["completion_tokens"] == 2


# --- templates and BOS on the real model --------------------------------------------------------


def test_bos_is_not_doubled_when_the_template_writes_it(engine: LlamaEngine) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    path = _local_model(engine, chat_template=template)
    value = _run(engine, _chat("hello"), _source())
    assert value["usage"]["prompt_tokens"] == len(
        _expected_prompt_tokens(path, f"{BOS}hello", add_bos=False)
    )
    assert _expected_prompt_tokens(path, f"{BOS}hello", add_bos=False).count(1) == 1


def test_bos_is_not_added_when_the_model_says_so(engine: LlamaEngine) -> None:
    path = _local_model(engine, add_bos=False, chat_template="{{ messages[0].content }}")
    value = _run(engine, _chat("hello"), _source())
    expected = _expected_prompt_tokens(path, "hello", add_bos=False)
    assert expected[0] != 1
    assert value["usage"]["prompt_tokens"] == len(expected)


def test_system_prompt_and_kwargs_reach_the_template(engine: LlamaEngine) -> None:
    template = (
        "{% if messages[0].role != 'system' %}{{ raise_exception('no system first') }}{% endif %}"
        "{% if flavour != 'request' %}{{ raise_exception('flavour=' ~ flavour) }}{% endif %}"
        "{{ messages[0].content }}{{ eos_token }}"
    )
    _local_model(engine, chat_template=template)
    source = _source(kwargs={"flavour": "model", "other": 1})
    with pytest.raises(EngineError) as err:
        _run(engine, _chat(system="be brief"), source)
    assert str(err.value) == "chat template: flavour=model"
    with pytest.raises(EngineError, match=r"^chat template: no system first$"):
        _run(engine, _chat(chat_template_kwargs={"flavour": "request"}), source)
    task = _chat(system="be brief", chat_template_kwargs={"flavour": "request"})
    path = engine.models_root / "llm" / "tiny.gguf"
    expected = _expected_prompt_tokens(path, f"be brief{EOS}", add_bos=True)
    assert _run(engine, task, source)["usage"]["prompt_tokens"] == len(expected)


def test_a_model_without_a_chat_template_is_refused(engine: LlamaEngine) -> None:
    _local_model(engine, chat_template=None)
    with pytest.raises(EngineError) as err:
        _run(engine, _chat(), _source())
    assert str(err.value) == "model has no chat template (tokenizer.chat_template)"


def test_a_template_that_does_not_compile_fails_the_job(engine: LlamaEngine) -> None:
    _local_model(engine, chat_template="{% for %}")
    with pytest.raises(EngineError) as err:
        _run(engine, _chat(), _source())
    assert str(err.value).startswith("chat template: ")


# --- keeping the model loaded -------------------------------------------------------------------


def test_the_model_stays_loaded_between_jobs(
    engine: LlamaEngine, model_server: ModelServer
) -> None:
    source = _source(model_server.publish(cached_tiny_llama(), name="tiny.gguf"))
    _run(engine, _chat(), source)
    events: list[Event] = []
    _run(engine, _chat("again"), source, events=events)
    assert engine.model_loads == 1
    assert not [e for e in events if e[0] in ("loading", "downloading")]
    assert model_server.requests == ["/tiny.gguf"], "the cached file is reused"


def test_a_new_context_size_or_a_changed_file_reloads(engine: LlamaEngine) -> None:
    path = _local_model(engine)
    _run(engine, _chat(), _source(context_size=256))
    _run(engine, _chat(), _source(context_size=256))
    assert engine.model_loads == 1
    _run(engine, _chat(), _source(context_size=128))
    assert engine.model_loads == 2
    write_tiny_llama(path, seed=1)
    os.utime(path, ns=(1, 1))  # same size, different mtime
    _run(engine, _chat(), _source(context_size=128))
    assert engine.model_loads == 3


def test_switching_models_frees_the_old_one(engine: LlamaEngine) -> None:
    _local_model(engine, "a.gguf")
    _local_model(engine, "b.gguf", seed=1)
    _run(engine, _chat(), _source(), model="a")
    first = _newest(engine)
    _run(engine, _chat(), _source(), model="b")
    assert engine.model_loads == 2
    assert first.llama._model.model is None, "the first model was freed"
    engine.close()
    assert engine.resident() == []
    engine.close()  # idempotent


def test_the_model_runs_on_every_available_core_or_the_override(
    engine: LlamaEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The binding's own default is half the CPUs, which idles half of a machine without SMT.
    monkeypatch.delenv(THREADS_ENV, raising=False)
    _local_model(engine)
    _run(engine, _chat(), _source())
    context = _newest(engine).llama.ctx
    assert llama_cpp.llama_n_threads(context) == available_cores()
    assert llama_cpp.llama_n_threads_batch(context) == available_cores()

    monkeypatch.setenv(THREADS_ENV, "1")
    pinned = LlamaEngine(tmp_path / "models")
    try:
        _run(pinned, _chat(), _source())
        assert llama_cpp.llama_n_threads(_newest(pinned).llama.ctx) == 1
    finally:
        pinned.close()


# --- corrupt files ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["random", "truncated", "bad-tensor-info", "bad-magic", "empty"])
def test_a_corrupt_gguf_fails_the_job_and_the_engine_recovers(
    engine: LlamaEngine, damage: str
) -> None:
    good = cached_tiny_llama().read_bytes()
    # Past the metadata the header reader checks: only llama.cpp can see this damage.
    info = good.index(b"token_embd.weight") + len(b"token_embd.weight")
    body = {
        "random": b"GGUF" + os.urandom(4096),
        "truncated": good[: len(good) // 2],
        "bad-tensor-info": good[:info] + b"\xff" * 64 + good[info + 64 :],
        "bad-magic": b"NOPE" + good[4:],
        "empty": b"",
    }[damage]
    bad = engine.models_root / "llm" / "bad.gguf"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(body)
    with pytest.raises(EngineError) as err:
        _run(engine, _chat(), _source(), model="bad")
    assert "bad.gguf" in str(err.value)
    assert err.value.retryable
    if damage in ("truncated", "bad-tensor-info"):
        assert "llama.cpp could not load bad.gguf: " in str(err.value)
    if damage == "truncated":
        assert "not within the file bounds" in str(err.value), "llama.cpp's own reason"
    assert engine.model_loads == 0
    _local_model(engine)
    assert _run(engine, _chat(max_tokens=2), _source())["usage"]["completion_tokens"] == 2


# --- the GGUF header reader ---------------------------------------------------------------------


def test_the_header_reader_finds_the_training_context(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_ctx_train=300)
    assert training_context(path) == 300
    meta = dict(iter_metadata(path))
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert "tokenizer.ggml.tokens" not in meta, "arrays are skipped"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "bad magic"),
        (b"GGML\x03\x00\x00\x00", "bad magic"),
        (b"GGUF\x01\x00\x00\x00", "unsupported GGUF version 1"),
        (b"GGUF\x03\x00\x00\x00\x00", "truncated"),
        (b"GGUF\x03\x00\x00\x00" + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
         + (2**60).to_bytes(8, "little"), "implausible string length"),
    ],
)  # fmt: skip
def test_the_header_reader_refuses_garbage(tmp_path: Path, body: bytes, message: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(body)
    with pytest.raises(GgufFormatError, match=message):
        training_context(path)
