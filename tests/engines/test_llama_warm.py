"""The llama engine's warm models on real llama-cpp-python and generated tiny GGUFs: up to
``max_warm_models`` kept under their load keys, the least recently used evicted first,
``before_load`` once per load and never for a warm model, ``resident``/``unload``, and what
the CPU build says about its compute device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from engines.base import JobContext, JsonResult
from engines.errors import EngineError, LoadRefused
from engines.ggml_device import GgmlRegistry
from engines.llama import LlamaEngine
from engines.load_keys import load_key
from engines.loader import create_engine
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from tests.support.models.tiny_llama import write_tiny_llama

SOURCE = ModelSource("llama-cpp", [], ModelCliDefaults(1.0, 8, 512, 512, context_size=256))
TASK = LlmTask(messages=[ChatMessage("user", "hello")], temperature=0.0, max_tokens=2)


class Loads:
    """A ``before_load`` that records its estimates (or refuses)."""

    def __init__(self, refuse: bool = False) -> None:
        self.estimates: list[int] = []
        self.refuse = refuse

    def __call__(self, estimate_bytes: int) -> None:
        self.estimates.append(estimate_bytes)
        if self.refuse:
            raise LoadRefused("the supervisor refused to load it: 1.0 GiB do not fit")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LlamaEngine]:
    eng = LlamaEngine(tmp_path / "models")
    for seed, name in enumerate("abc"):
        write_tiny_llama(eng.models_root / "llm" / f"{name}.gguf", seed=seed)
    try:
        yield eng
    finally:
        eng.close()


def run(engine: LlamaEngine, model: str, loads: Loads, *, with_key: bool = True) -> None:
    ctx = JobContext(
        job_id=f"job-{model}",
        model=model,
        task=TASK,
        model_source=SOURCE,
        models_root=engine.models_root,
        load_key=key(model) if with_key else "",
        before_load=loads,
    )
    assert isinstance(engine.run(ctx), JsonResult)


def key(model: str) -> str:
    return load_key("llama", model, SOURCE, TASK)


def size(engine: LlamaEngine, model: str) -> int:
    return (engine.models_root / "llm" / f"{model}.gguf").stat().st_size


def resident_keys(engine: LlamaEngine) -> list[str]:
    return [m.load_key for m in engine.resident()]


def test_two_warm_models_stay_and_a_third_evicts_the_least_recently_used(
    engine: LlamaEngine,
) -> None:
    engine.max_warm_models = 2
    loads = Loads()
    run(engine, "a", loads)
    run(engine, "b", loads)
    assert engine.resident() == [
        ResidentModel(key("a"), size(engine, "a")),
        ResidentModel(key("b"), size(engine, "b")),
    ]
    first_b = engine._warm.peek(key("b"))
    assert first_b is not None
    run(engine, "a", loads)  # warm: no load, and a is now the most recently used
    run(engine, "b", loads)
    run(engine, "a", loads)
    assert engine.model_loads == 2
    assert loads.estimates == [size(engine, "a"), size(engine, "b")]
    assert resident_keys(engine) == [key("b"), key("a")]

    run(engine, "c", loads)
    assert engine.model_loads == 3
    assert resident_keys(engine) == [key("a"), key("c")]
    assert first_b.llama._model.model is None, "the evicted model was freed"
    assert loads.estimates == [size(engine, "a"), size(engine, "b"), size(engine, "c")]


def test_one_warm_model_by_default_replaces_the_last(engine: LlamaEngine) -> None:
    assert engine.max_warm_models == 1
    loads = Loads()
    run(engine, "a", loads)
    first = engine._warm.peek(key("a"))
    assert first is not None
    run(engine, "b", loads)
    assert resident_keys(engine) == [key("b")]
    assert first.llama._model.model is None
    run(engine, "b", loads)
    assert engine.model_loads == 2
    assert len(loads.estimates) == 2


def test_unload_frees_one_model_and_the_next_job_loads_it_again(engine: LlamaEngine) -> None:
    engine.max_warm_models = 2
    loads = Loads()
    run(engine, "a", loads)
    run(engine, "b", loads)
    loaded_a = engine._warm.peek(key("a"))
    assert loaded_a is not None
    assert engine.unload(key("a")) is True
    assert loaded_a.llama._model.model is None
    assert resident_keys(engine) == [key("b")]
    assert engine.unload(key("a")) is False
    assert engine.unload("llama:never-loaded") is False
    run(engine, "a", loads)
    assert engine.model_loads == 3
    assert resident_keys(engine) == [key("b"), key("a")]


def test_the_engine_computes_the_key_when_the_host_gives_none(engine: LlamaEngine) -> None:
    loads = Loads()
    run(engine, "a", loads, with_key=False)
    run(engine, "a", loads, with_key=True)
    assert resident_keys(engine) == [key("a")]
    assert engine.model_loads == 1


def test_a_refused_load_fails_the_job_and_loads_nothing(engine: LlamaEngine) -> None:
    refusing = Loads(refuse=True)
    with pytest.raises(LoadRefused, match=r"1\.0 GiB do not fit") as caught:
        run(engine, "a", refusing)
    assert caught.value.reason == "vram_unavailable"
    assert caught.value.retryable
    assert engine.resident() == []
    assert engine.model_loads == 0
    run(engine, "a", Loads())
    assert engine.model_loads == 1


def test_the_loader_sets_the_warm_model_count(tmp_path: Path) -> None:
    eng = create_engine("llama", tmp_path, max_warm_models=3)
    try:
        assert eng.max_warm_models == 3
    finally:
        eng.close()
    with pytest.raises(ValueError, match="at least 1"):
        create_engine("llama", tmp_path, max_warm_models=0)


def test_the_cpu_build_reports_the_cpu_and_probes_trivially(engine: LlamaEngine) -> None:
    assert not llama_cpp.llama_supports_gpu_offload()
    assert engine.compute_device() == ComputeDevice("cpu")
    assert engine.probe_device(2**20) == "cpu: nothing to probe"


def test_ggml_allocates_through_the_library_and_says_why_it_cannot() -> None:
    registry = GgmlRegistry(llama_cpp.llama_cpp._lib)
    devices = registry.devices()
    assert [(reg, name) for reg, name, _ in devices] == [("CPU", "CPU")]
    assert registry.gpu() is None
    cpu = devices[0][2]
    registry.allocate_and_free(cpu, 16 * 2**20)
    with pytest.raises(EngineError, match="MiB on the device failed"):
        registry.allocate_and_free(cpu, 2**62)
