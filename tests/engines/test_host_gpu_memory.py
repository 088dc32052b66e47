"""The host's half of GPU memory governance, end to end: a real ``python -m engines`` on a
simulated GPU, a real ZeroMQ ROUTER in the test, real allocation files. Load requests and
grants, ``Resident`` after jobs and unloads, refusals, cancels, probes, out-of-memory and a
killed host's memory."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from engines.simulated_gpu import (
    ALLOC_DIR_ENV,
    CONFIG_ENV,
    HostAllocations,
    SimConfig,
    SimDevice,
    live_allocations,
)
from protocol import ipc
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import ImageTask, ModelCliDefaults, ModelSource
from tests.engines.host_harness import WAIT_S, HostUnderTest, running_host

UUID = "GPU-5a1b0000-0000-4000-8000-000000000002"
GIB = 2**30
SOURCE = ModelSource("synthetic", [], ModelCliDefaults(1.0, 1, 512, 512))
ASK = "--ask-before-load"


@dataclass
class Sim:
    tmp_path: Path
    config: Path
    alloc_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            CONFIG_ENV: str(self.config),
            ALLOC_DIR_ENV: str(self.alloc_dir),
            "CUDA_VISIBLE_DEVICES": UUID,
        }

    def write(self, total_mib: int = 24576, foreign_mib: int = 0, healthy: bool = True) -> None:
        device = SimDevice(0, "Sim 24G", total_mib, foreign_mib, UUID, healthy=healthy)
        self.config.write_bytes(msgspec.json.encode(SimConfig([device])))

    def host(self, *args: str) -> AbstractContextManager[HostUnderTest]:
        return running_host(self.tmp_path, *args, env=self.env)

    def held(self, pid: int) -> dict[str, int]:
        """What host ``pid`` holds, as its file says (only while it is alive)."""
        found = [h for h in live_allocations(self.alloc_dir) if h.pid == pid]
        return found[0].allocations if found else {}

    def file_of(self, pid: int) -> HostAllocations:
        path = self.alloc_dir / f"{pid}.json"
        return msgspec.json.decode(path.read_bytes(), type=HostAllocations)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    made = Sim(tmp_path, tmp_path / "gpus.json", tmp_path / "alloc")
    made.write()
    yield made


def run_job(job_id: str, model: str = "m", gib: float = 2) -> ipc.RunJob:
    task = ImageTask(prompt="p", ext="png")
    return ipc.RunJob(job_id, model, task, SOURCE, 60.0, vram_estimate_bytes=int(gib * GIB))


def request(host: HostUnderTest) -> ipc.LoadRequest:
    """The next load request; only a ``Resident`` (what changed by evicting) may come first."""
    seen, asked = host.until(ipc.LoadRequest)
    assert all(isinstance(m, ipc.Resident) for m in seen), seen
    return asked


def grant_load(host: HostUnderTest, job_id: str, key: str, gib: float) -> None:
    """Expect the load request and grant it."""
    assert request(host) == ipc.LoadRequest(job_id, key, int(gib * GIB))
    host.send(ipc.LoadGrant(job_id, granted=True))


def finish(host: HostUnderTest) -> tuple[ipc.Resident, ipc.JobDone | ipc.JobFailed]:
    """What the host keeps loaded when the job ends (its latest ``Resident``, sent before
    the result whenever it changed) and the result."""
    seen, result = host.until(ipc.JobDone | ipc.JobFailed)  # type: ignore[arg-type]
    assert all(isinstance(m, ipc.Resident) for m in seen), seen
    return host.last_resident, result


def test_a_load_waits_for_its_grant_and_the_model_stays_resident(sim: Sim) -> None:
    with sim.host(ASK) as host:
        assert host.ready is not None
        assert host.ready.compute == ComputeDevice("simulated", "Sim 24G", UUID)
        host.send(run_job("job-1"))
        seen, asked = host.until(ipc.LoadRequest)
        assert seen == [], "nothing loaded, nothing changed: no Resident first"
        assert asked == ipc.LoadRequest("job-1", "synthetic:m", 2 * GIB)
        assert sim.held(host.pid) == {}, "nothing is loaded before the grant"
        host.send(ipc.LoadGrant("job-0", granted=True))  # for no waiting load: dropped
        host.send(ipc.LoadGrant("job-1", granted=True))
        resident, done = finish(host)
        assert isinstance(done, ipc.JobDone)
        assert resident == ipc.Resident([ResidentModel("synthetic:m", 2 * GIB)])
        assert sim.held(host.pid) == {"synthetic:m": 2 * GIB}

        host.send(run_job("job-2"))  # warm: no request
        resident, done = finish(host)
        assert isinstance(done, ipc.JobDone)
        assert resident == ipc.Resident([ResidentModel("synthetic:m", 2 * GIB)])
    assert "dropped a load grant for job job-0" in host.log()


def test_unload_answers_resident_and_frees_the_memory(sim: Sim) -> None:
    with sim.host(ASK, "--max-warm-models", "2") as host:
        for job_id, model in (("j1", "a"), ("j2", "b")):
            host.send(run_job(job_id, model, 1))
            grant_load(host, job_id, f"synthetic:{model}", 1)
            finish(host)
        assert sim.held(host.pid) == {"synthetic:a": GIB, "synthetic:b": GIB}
        host.send(ipc.Unload(["synthetic:a", "synthetic:never-loaded"]))
        assert host.expect(ipc.Resident) == ipc.Resident([ResidentModel("synthetic:b", GIB)])
        assert sim.held(host.pid) == {"synthetic:b": GIB}

        # A second model beside b fits the two warm places: nothing to evict, nothing to say.
        host.send(run_job("j3", "c", 1))
        seen, _ = host.until(ipc.LoadRequest)
        assert seen == []
        assert sim.held(host.pid) == {"synthetic:b": GIB}
        host.send(run_job("j3-busy", "d", 1))  # one job at a time, waiting or not
        busy = host.expect(ipc.JobFailed)
        assert (busy.job_id, busy.reason) == ("j3-busy", "busy")
        host.send(ipc.LoadGrant("j3", granted=True))
        resident, _ = finish(host)
        assert [m.load_key for m in resident.models] == ["synthetic:b", "synthetic:c"]


def test_an_unload_queued_behind_a_job_runs_after_it(sim: Sim) -> None:
    with sim.host(ASK) as host:
        host.send(run_job("j1"))
        request(host)
        host.send(ipc.Unload(["synthetic:m"]))  # arrives mid-job: waits for the job's end
        host.send(ipc.LoadGrant("j1", granted=True))
        resident, done = finish(host)
        assert isinstance(done, ipc.JobDone)
        assert [m.load_key for m in resident.models] == ["synthetic:m"]
        assert host.expect(ipc.Resident) == ipc.Resident([])
        assert sim.held(host.pid) == {}


def test_synthetic_nofree_keeps_its_memory_after_the_unload(sim: Sim) -> None:
    with sim.host(ASK) as host:
        host.send(run_job("j1", "synthetic-nofree", 3))
        grant_load(host, "j1", "synthetic:synthetic-nofree", 3)
        _, done = finish(host)
        assert isinstance(done, ipc.JobDone)
        host.send(ipc.Unload(["synthetic:synthetic-nofree"]))
        assert host.expect(ipc.Resident) == ipc.Resident([])
        assert sum(sim.held(host.pid).values()) == 3 * GIB, "nothing was freed"


def test_a_refused_grant_fails_the_job_as_vram_unavailable(sim: Sim) -> None:
    with sim.host(ASK) as host:
        host.send(run_job("j1", "m", 6))
        request(host)
        host.send(ipc.LoadGrant("j1", granted=False, reason="6.0 GiB do not fit on GPU 0"))
        resident, failed = finish(host)
        assert isinstance(failed, ipc.JobFailed)
        assert (failed.reason, failed.retryable) == (ipc.REASON_NO_MEMORY, True)
        assert "6.0 GiB do not fit on GPU 0" in failed.error
        assert resident == ipc.Resident([])
        assert sim.held(host.pid) == {}


def test_a_cancel_ends_the_wait_for_a_grant(sim: Sim) -> None:
    with sim.host(ASK) as host:
        host.send(run_job("j1"))
        request(host)
        host.send(ipc.CancelJob("j1"))
        _, failed = finish(host)
        assert isinstance(failed, ipc.JobFailed)
        assert failed.error == "cancelled"
        host.send(ipc.LoadGrant("j1", granted=True))  # late: dropped
        host.send(run_job("j2"))
        assert request(host).job_id == "j2"
        host.send(ipc.LoadGrant("j2", granted=True))
        _, done = finish(host)
        assert isinstance(done, ipc.JobDone)
    assert "dropped a load grant for job j1" in host.log()


def test_without_asking_a_host_loads_at_once_and_still_reports(sim: Sim) -> None:
    with sim.host() as host:
        host.send(run_job("j1"))
        resident, done = finish(host)  # no LoadRequest before these
        assert isinstance(done, ipc.JobDone)
        assert resident == ipc.Resident([ResidentModel("synthetic:m", 2 * GIB)])


def test_a_load_that_does_not_fit_fails_as_vram_oom(sim: Sim) -> None:
    sim.write(total_mib=8192, foreign_mib=4096)
    with sim.host(ASK) as host:
        host.send(run_job("j1", "m", 6))
        grant_load(host, "j1", "synthetic:m", 6)
        resident, failed = finish(host)
        assert isinstance(failed, ipc.JobFailed)
        assert (failed.reason, failed.retryable) == (ipc.REASON_VRAM_OOM, True)
        assert "cudaMalloc failed: out of memory" in failed.error
        assert resident == ipc.Resident([])

        host.send(run_job("j2", "synthetic-oom", 1))
        grant_load(host, "j2", "synthetic:synthetic-oom", 1)
        resident, failed = finish(host)
        assert isinstance(failed, ipc.JobFailed)
        assert failed.reason == ipc.REASON_VRAM_OOM
        assert resident == ipc.Resident([ResidentModel("synthetic:synthetic-oom", GIB)])


def test_a_probe_answers_for_a_healthy_and_an_unhealthy_device(sim: Sim) -> None:
    with sim.host(ASK) as host:
        host.send(ipc.Probe(GIB))
        ok = host.expect(ipc.ProbeResult)
        assert ok == ipc.ProbeResult(True, "simulated Sim 24G: allocated and freed 1024.00 MiB")
        sim.write(healthy=False)
        host.send(ipc.Probe(GIB))
        bad = host.expect(ipc.ProbeResult)
        assert not bad.ok
        assert "unspecified launch failure" in bad.detail
        assert sim.held(host.pid) == {}


def test_a_killed_hosts_memory_no_longer_counts(sim: Sim) -> None:
    sim.write(total_mib=8192)
    with sim.host() as first:
        first.send(run_job("j1", "m", 6))
        finish(first)
        assert sim.held(first.pid) == {"synthetic:m": 6 * GIB}
        with sim.host() as second:
            second.send(run_job("j2", "m", 6))
            _, failed = finish(second)
            assert isinstance(failed, ipc.JobFailed)
            assert failed.reason == ipc.REASON_VRAM_OOM
            first.proc.send_signal(signal.SIGKILL)
            assert first.proc.wait(timeout=WAIT_S) == -signal.SIGKILL
            # Its file is still there, and no longer counts.
            assert sim.file_of(first.pid).allocations == {"synthetic:m": 6 * GIB}
            assert first.pid not in [h.pid for h in live_allocations(sim.alloc_dir)]
            second.send(run_job("j3", "m", 6))
            _, done = finish(second)
            assert isinstance(done, ipc.JobDone)


@pytest.mark.parametrize(
    ("faults", "backend", "uuid_is_pinned"),
    [("backend-cpu", "cpu", False), ("wrong-device", "simulated", False), ("", "simulated", True)],
)
def test_ready_reports_the_device_or_the_fault(
    sim: Sim, faults: str, backend: str, uuid_is_pinned: bool
) -> None:
    with sim.host("--faults", faults) as host:
        assert host.ready is not None
        assert host.ready.compute.backend == backend
        assert (host.ready.compute.uuid == UUID) is uuid_is_pinned


def test_a_host_refuses_a_bad_warm_model_count(tmp_path: Path) -> None:
    with running_host(tmp_path, "--max-warm-models", "0", wait_ready=False) as host:
        assert host.proc.wait(timeout=WAIT_S) == 2
    assert "--max-warm-models: expected a whole number >= 1, got '0'" in host.log()


def test_a_grant_can_name_models_to_unload_first(sim: Sim) -> None:
    with sim.host(ASK, "--max-warm-models", "3") as host:
        for job_id, model in (("j1", "a"), ("j2", "b")):
            host.send(run_job(job_id, model, 1))
            grant_load(host, job_id, f"synthetic:{model}", 1)
            finish(host)
        host.send(run_job("j3", "c", 1))
        assert request(host).load_key == "synthetic:c"
        host.send(ipc.LoadGrant("j3", granted=True, unload_first=["synthetic:a"]))
        resident, done = finish(host)
        assert isinstance(done, ipc.JobDone)
        assert [m.load_key for m in resident.models] == ["synthetic:b", "synthetic:c"]
        assert sim.held(host.pid) == {"synthetic:b": GIB, "synthetic:c": GIB}
