"""The synthetic engine on a simulated GPU, in process, against real allocation files: model
loads and evictions, transient memory, out-of-memory in a real engine's words, the faults,
the probe, and other processes' memory (alive or dead)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from engines.base import JobContext
from engines.errors import EngineError
from engines.failure_text import FailureKind, classify_failure_text
from engines.faults import FaultOptions, parse_fault_options
from engines.simulated_gpu import (
    ALLOC_DIR_ENV,
    CONFIG_ENV,
    MIB,
    HostAllocations,
    SimConfig,
    SimDevice,
    SimulatedGpuError,
    live_allocations,
    write_allocations,
)
from engines.synthetic import SyntheticEngine
from engines.synthetic_vram import MIN_TRANSIENT_BYTES, SimulatedGpu, transient_bytes
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import ImageTask, ModelCliDefaults, ModelSource

UUID = "GPU-5a1b0000-0000-4000-8000-000000000001"
GIB = 2**30


@dataclass
class Sim:
    config: Path
    alloc_dir: Path
    engines: list[SyntheticEngine] = field(default_factory=list)

    def write(self, total_mib: int = 24576, foreign_mib: int = 0, healthy: bool = True) -> None:
        devices = [
            SimDevice(0, "Sim 8G", 8192, uuid="GPU-other"),
            SimDevice(1, "Sim 24G", total_mib, foreign_mib, UUID, healthy=healthy),
        ]
        self.config.write_bytes(msgspec.json.encode(SimConfig(devices)))

    def engine(self, faults: str = "", max_warm_models: int = 1) -> SyntheticEngine:
        engine = SyntheticEngine(parse_fault_options(faults))
        engine.max_warm_models = max_warm_models
        self.engines.append(engine)
        return engine

    def held(self) -> dict[str, int]:
        """What this process holds, as the file says."""
        mine = [h for h in live_allocations(self.alloc_dir) if h.pid == os.getpid()]
        assert len(mine) == 1
        assert mine[0].device_uuid == UUID
        return mine[0].allocations


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    made = Sim(tmp_path / "gpus.json", tmp_path / "alloc")
    made.write()
    monkeypatch.setenv(CONFIG_ENV, str(made.config))
    monkeypatch.setenv(ALLOC_DIR_ENV, str(made.alloc_dir))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUID)
    yield made
    for engine in made.engines:
        engine.close()


class Loads:
    def __init__(self) -> None:
        self.estimates: list[int] = []

    def __call__(self, estimate_bytes: int) -> None:
        self.estimates.append(estimate_bytes)


def job(model: str, gib: float, loads: Loads | None = None, job_id: str = "job-1") -> JobContext:
    source = ModelSource("synthetic", [], ModelCliDefaults(1.0, 1, 512, 512))
    ctx = JobContext(job_id, model, ImageTask(prompt="p", ext="png"), source, Path())
    ctx.vram_estimate_bytes = int(gib * GIB)
    if loads is not None:
        ctx.before_load = loads
    return ctx


def test_off_a_simulated_gpu_nothing_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    engine = SyntheticEngine()
    assert engine.gpu is None
    assert engine.compute_device() == ComputeDevice("cpu")
    loads = Loads()
    engine.run(job("synthetic-image", 4, loads))
    assert (loads.estimates, engine.resident(), engine.model_loads) == ([], [], 0)
    assert engine.unload("synthetic:synthetic-image") is False
    assert engine.probe_device(GIB) == "cpu: nothing to probe"


def test_a_job_loads_its_model_once_and_keeps_it(sim: Sim) -> None:
    engine = sim.engine()
    assert engine.compute_device() == ComputeDevice("simulated", "Sim 24G", UUID)
    assert sim.held() == {}, "the host's file exists from the start"
    loads = Loads()
    seen_while_generating: list[dict[str, int]] = []
    ctx = job("synthetic-image", 4, loads)
    ctx.progress = lambda phase, *_: (
        seen_while_generating.append(sim.held()) if phase == "generating" else None
    )
    engine.run(ctx)
    key = "synthetic:synthetic-image"
    assert seen_while_generating[0] == {key: 4 * GIB, "transient:job-1": MIN_TRANSIENT_BYTES}
    assert sim.held() == {key: 4 * GIB}, "the transient memory went with the job"
    assert engine.resident() == [ResidentModel(key, 4 * GIB)]
    assert loads.estimates == [4 * GIB]
    engine.run(job("synthetic-image", 4, loads, job_id="job-2"))
    assert loads.estimates == [4 * GIB], "a warm model is not asked for again"
    assert engine.model_loads == 1


def test_transient_memory_is_five_percent_of_the_model_or_256_mib() -> None:
    assert transient_bytes(0) == MIN_TRANSIENT_BYTES == 256 * MIB
    assert transient_bytes(20 * GIB) == GIB


def test_the_least_recently_used_model_is_unloaded_first(sim: Sim) -> None:
    engine = sim.engine(max_warm_models=2)
    for model in ("m-a", "m-b", "m-a", "m-c"):
        engine.run(job(model, 2))
    assert [m.load_key for m in engine.resident()] == ["synthetic:m-a", "synthetic:m-c"]
    assert sim.held() == {"synthetic:m-a": 2 * GIB, "synthetic:m-c": 2 * GIB}
    assert engine.unload("synthetic:m-a") is True
    assert sim.held() == {"synthetic:m-c": 2 * GIB}
    assert engine.unload("synthetic:m-a") is False


def test_a_model_that_does_not_fit_fails_like_a_real_engine(sim: Sim) -> None:
    sim.write(total_mib=24576, foreign_mib=20480)  # 4 GiB free
    engine = sim.engine()
    with pytest.raises(EngineError) as caught:
        engine.run(job("big", 6))
    text = str(caught.value)
    assert text == (
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 6144.00 MiB on device 0: "
        "cudaMalloc failed: out of memory"
    )
    assert classify_failure_text(text) is FailureKind.VRAM_OOM
    assert engine.resident() == []
    assert sim.held() == {}


def test_working_memory_that_does_not_fit_keeps_the_model_loaded(sim: Sim) -> None:
    sim.write(total_mib=4096 + 128)  # the model fits, its 256 MiB of working memory do not
    engine = sim.engine()
    with pytest.raises(EngineError, match=r"allocating 256\.00 MiB"):
        engine.run(job("m", 4))
    assert [m.load_key for m in engine.resident()] == ["synthetic:m"]
    assert sim.held() == {"synthetic:m": 4 * GIB}


def test_synthetic_oom_fails_after_the_load(sim: Sim) -> None:
    engine = sim.engine()
    with pytest.raises(EngineError) as caught:
        engine.run(job("synthetic-oom", 1))
    assert classify_failure_text(str(caught.value)) is FailureKind.VRAM_OOM
    assert sim.held() == {"synthetic:synthetic-oom": GIB}
    assert engine.model_loads == 1


def test_synthetic_nofree_leaks_at_the_next_unload_only(sim: Sim) -> None:
    engine = sim.engine(max_warm_models=2)
    engine.run(job("synthetic-nofree", 1))
    engine.run(job("m", 2))
    assert engine.unload("synthetic:m") is True
    assert engine.resident() == [ResidentModel("synthetic:synthetic-nofree", GIB)]
    assert sim.held() == {"synthetic:synthetic-nofree": GIB, "leaked:synthetic:m": 2 * GIB}
    assert engine.unload("synthetic:synthetic-nofree") is True
    assert engine.resident() == []
    assert sim.held() == {"leaked:synthetic:m": 2 * GIB}


def test_the_probe_allocates_and_frees_or_fails_on_an_unhealthy_device(sim: Sim) -> None:
    engine = sim.engine()
    assert engine.probe_device(GIB) == "simulated Sim 24G: allocated and freed 1024.00 MiB"
    assert sim.held() == {}
    sim.write(healthy=False)  # re-read at every probe
    with pytest.raises(EngineError, match="unspecified launch failure") as caught:
        engine.probe_device(GIB)
    assert classify_failure_text(str(caught.value)) is FailureKind.DEVICE_ERROR
    sim.write(total_mib=512)
    with pytest.raises(EngineError, match="cudaMalloc failed: out of memory"):
        engine.probe_device(GIB)
    assert sim.held() == {}


def test_other_live_hosts_count_and_dead_ones_do_not(sim: Sim) -> None:
    sim.write(total_mib=8192)
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        write_allocations(sim.alloc_dir, HostAllocations(other.pid, UUID, {"model": 6 * GIB}))
        elsewhere = HostAllocations(os.getpid() + 10**6, "GPU-other", {"x": 8 * GIB})
        write_allocations(sim.alloc_dir, elsewhere)  # another device, not alive either
        engine = sim.engine()
        with pytest.raises(EngineError, match="out of memory"):
            engine.run(job("m", 2))
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=30)
    engine.run(job("m", 2))  # the other host is gone: its memory is free
    assert sim.held() == {"synthetic:m": 2 * GIB}


def test_close_removes_the_file(sim: Sim) -> None:
    engine = sim.engine()
    engine.run(job("m", 1))
    engine.close()
    assert not (sim.alloc_dir / f"{os.getpid()}.json").exists()


def test_device_report_faults(sim: Sim) -> None:
    assert sim.engine("backend-cpu").compute_device() == ComputeDevice("cpu")
    wrong = sim.engine("wrong-device").compute_device()
    assert (wrong.backend, wrong.name) == ("simulated", "Sim 24G")
    assert wrong.uuid.startswith("GPU-") and wrong.uuid != UUID
    assert len(wrong.uuid) == len(UUID)


def test_only_a_pin_to_one_simulated_uuid_is_a_simulated_gpu(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {CONFIG_ENV: str(sim.config), ALLOC_DIR_ENV: str(sim.alloc_dir)}
    faults = FaultOptions()
    assert SimulatedGpu.from_environment(faults, env) is None  # not pinned
    assert SimulatedGpu.from_environment(faults, env | {"CUDA_VISIBLE_DEVICES": "1"}) is None
    both = env | {"CUDA_VISIBLE_DEVICES": f"{UUID},GPU-other"}
    assert SimulatedGpu.from_environment(faults, both) is None
    pinned = SimulatedGpu.from_environment(faults, env | {"CUDA_VISIBLE_DEVICES": UUID})
    assert pinned is not None and pinned.device.index == 1
    pinned.close()
    no_dir = {CONFIG_ENV: str(sim.config), "CUDA_VISIBLE_DEVICES": UUID}
    with pytest.raises(SimulatedGpuError, match=ALLOC_DIR_ENV):
        SimulatedGpu.from_environment(faults, no_dir)
