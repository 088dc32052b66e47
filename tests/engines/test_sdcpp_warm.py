"""The sd-cpp engine's warm models on the real library and the generated SDXS checkpoint:
up to ``max_warm_models`` kept under their load keys, the least recently used evicted first,
``before_load`` once per load with the files' size, ``resident``/``unload``, and what the
CPU build says about its compute device."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import stable_diffusion_cpp as sd_cpp

from engines.base import BinaryResult
from engines.ggml_device import GgmlRegistry
from engines.load_keys import load_key
from engines.sdcpp import SdCppEngine
from protocol.ipc import ComputeDevice, ResidentModel
from tests.engines.test_sdcpp_engine import Setup, image_task, setup, tiny_model

__all__ = ["setup", "tiny_model"]  # fixtures, imported for pytest


class Loads:
    def __init__(self) -> None:
        self.estimates: list[int] = []

    def __call__(self, estimate_bytes: int) -> None:
        self.estimates.append(estimate_bytes)


def run(setup: Setup, engine: SdCppEngine, model: str, loads: Loads) -> None:
    ctx, _ = setup.job(image_task(), model=model)
    ctx.load_key = key(setup, model)
    ctx.before_load = loads
    assert isinstance(engine.run(ctx), BinaryResult)


def key(setup: Setup, model: str) -> str:
    return load_key("sdcpp", model, setup.source(), image_task())


def keys(engine: SdCppEngine) -> list[str]:
    return [m.load_key for m in engine.resident()]


@pytest.mark.slow
def test_two_warm_models_stay_and_a_third_evicts_the_least_recently_used(setup: Setup) -> None:
    sizes = {m: setup.place_model(m).stat().st_size for m in ("a", "b", "c")}
    engine = setup.engine()
    engine.max_warm_models = 2
    loads = Loads()
    run(setup, engine, "a", loads)
    run(setup, engine, "b", loads)
    assert engine.resident() == [
        ResidentModel(key(setup, "a"), sizes["a"]),
        ResidentModel(key(setup, "b"), sizes["b"]),
    ]
    run(setup, engine, "a", loads)  # warm, and now the most recently used
    assert engine.model_loads == 2
    assert loads.estimates == [sizes["a"], sizes["b"]]

    run(setup, engine, "c", loads)
    assert engine.model_loads == 3
    assert keys(engine) == [key(setup, "a"), key(setup, "c")]
    assert loads.estimates == [sizes["a"], sizes["b"], sizes["c"]]


@pytest.mark.slow
def test_one_warm_model_by_default_and_unload(setup: Setup) -> None:
    setup.place_model("a")
    setup.place_model("b")
    engine = setup.engine()
    assert engine.max_warm_models == 1
    loads = Loads()
    run(setup, engine, "a", loads)
    run(setup, engine, "b", loads)
    run(setup, engine, "b", loads)
    assert keys(engine) == [key(setup, "b")]
    assert engine.model_loads == 2 == len(loads.estimates)
    assert engine.unload(key(setup, "a")) is False
    assert engine.unload(key(setup, "b")) is True
    assert engine.resident() == []
    run(setup, engine, "b", loads)
    assert engine.model_loads == 3


@pytest.mark.slow
def test_a_changed_file_reloads_under_the_same_key(setup: Setup, tiny_model: Path) -> None:
    path = setup.place_model("a")
    engine = setup.engine()
    loads = Loads()
    run(setup, engine, "a", loads)
    path.unlink()
    shutil.copyfile(tiny_model, path)  # the same bytes anew: the engine only sees the stamp
    run(setup, engine, "a", loads)
    assert engine.model_loads == 2
    assert keys(engine) == [key(setup, "a")]


def test_the_cpu_build_reports_the_cpu_and_probes_trivially(tmp_path: Path) -> None:
    engine = SdCppEngine(tmp_path)
    try:
        assert engine.compute_device() == ComputeDevice("cpu")
        assert engine.probe_device(2**20) == "cpu: nothing to probe"
    finally:
        engine.close()
    registry = GgmlRegistry(sd_cpp.stable_diffusion_cpp._lib)
    devices = registry.devices()
    assert [(reg, name) for reg, name, _ in devices] == [("CPU", "CPU")]
    registry.allocate_and_free(devices[0][2], 2**20)
