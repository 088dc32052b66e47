"""Lanes through real processes: a local studio that offers each worker one job at a time
(the real studio's rule), a real ``supervisor start --lanes per-gpu`` with its engine hosts,
and simulated GPUs. Every GPU gets its own studio identity, so every GPU is busy at once;
a revoked lane stops alone; an existing registration carries over to the first lane."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from localstudio.api_types import JobView
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.config import load_config
from supervisor.exit_codes import ExitCode
from supervisor.machine_facts import machine_name
from tests.support.contract_harness import (
    Processes,
    StudioProcess,
    SupervisorProcess,
    job_outcomes,
    poll_until,
    start_studio,
    start_supervisor,
    write_worker_config,
)

SOURCE = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
JOB_TIMEOUT_S = 60.0


@pytest.fixture
def one_offer_studio(processes: Processes, tmp_path: Path) -> Iterator[StudioProcess]:
    """A local studio that offers each worker one job at a time, like the real one."""
    studio = start_studio(processes, tmp_path / "studio", one_offer_per_worker=True)
    with studio.client:
        yield studio


def simulated_gpus(processes: Processes, tmp_path: Path, count: int) -> None:
    gpus = tmp_path / "gpus.json"
    devices = [{"index": i, "name": "Sim 24G", "total_mib": 24576} for i in range(count)]
    gpus.write_text(json.dumps({"devices": devices}))
    processes.env["STUDIO_WORKER_SIMULATED_GPUS"] = str(gpus)


def engines_on(count: int) -> str:
    return ",".join(f"synthetic@{i}" for i in range(count))


def start_lanes(
    processes: Processes,
    studio: StudioProcess,
    tmp_path: Path,
    gpus: int,
    *args: str,
    expected_codes: frozenset[int] = frozenset({0}),
) -> tuple[SupervisorProcess, Path]:
    """A fresh worker on ``gpus`` simulated GPUs, ``start --lanes per-gpu ARGS``."""
    simulated_gpus(processes, tmp_path, gpus)
    config = tmp_path / "worker" / "config.toml"
    write_worker_config(config, studio.api_base_url)
    sup = start_supervisor(
        processes,
        config,
        "--lanes",
        "per-gpu",
        *args,
        engines=engines_on(gpus),
        expected_codes=expected_codes,
    )
    return sup, config


def wait_welcomed(sup: SupervisorProcess, count: int) -> list[str]:
    """The worker ids of the first ``count`` welcomes."""
    ids, start = [], 0
    for _ in range(count):
        start = sup.wait_welcomed(start=start) + 1
        match = re.search(r"server welcomed (\S+)", sup.proc.log.snapshot()[start - 1])
        assert match is not None
        ids.append(match.group(1))
    return ids


def slow_job(studio: StudioProcess, n: int) -> JobView:
    task = LlmTask(messages=[ChatMessage("user", f"job {n}")], max_tokens=4)
    return studio.client.submit_job("synthetic-slow", task, SOURCE, vram_gb_estimate=1.0)


def peak_concurrency(jobs: list[JobView]) -> int:
    """The most jobs running at one instant, from the studio's accept and finish times."""
    edges: list[tuple[datetime, int]] = []
    for job in jobs:
        assert job.accepted_at and job.finished_at, job
        edges.append((datetime.fromisoformat(job.accepted_at), 1))
        edges.append((datetime.fromisoformat(job.finished_at), -1))
    running = peak = 0
    for _, step in sorted(edges):  # a finish sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_four_gpus_four_lanes_every_gpu_busy_under_one_offer_per_worker(
    processes: Processes, one_offer_studio: StudioProcess, tmp_path: Path
) -> None:
    studio = one_offer_studio
    sup, config = start_lanes(processes, studio, tmp_path, 4, "--faults", "slow-job=1")
    ids = wait_welcomed(sup, 4)
    assert len(set(ids)) == 4, "four studio identities"
    # Each lane shows itself to the studio's operator by machine name.
    names = {w.capabilities.machine_name for w in studio.client.workers() if w.capabilities}
    assert names == {f"{machine_name()}/gpu{i}" for i in range(4)}
    cfg = load_config(config)
    assert cfg.worker_id is not None and sorted(cfg.lane) == ["gpu1", "gpu2", "gpu3"]
    assert {cfg.worker_id, *(t.worker_id for t in cfg.lane.values())} == set(ids)
    jobs = [slow_job(studio, n) for n in range(8)]
    final = [studio.client.wait_for_job(j.id, timeout_s=JOB_TIMEOUT_S) for j in jobs]
    assert [j.status for j in final] == ["done"] * 8
    assert len({j.claimed_by for j in final}) == 4, "every lane served"
    assert peak_concurrency(final) >= 3, "the GPUs ran side by side"
    status = sup.status()
    assert "lanes:" in status
    for i in range(4):
        assert re.search(rf"^  gpu{i}\s+welcomed as \S+, claiming on", status, re.MULTILINE)
    one = sup.cli("status", "--lane", "gpu2").stdout
    assert "synthetic-gpu2-2" in one and "synthetic-gpu1-1" not in one
    served = sum(1 for j in final if j.claimed_by == cfg.lane["gpu2"].worker_id)
    assert job_outcomes(one)["done"] == served, "that lane's counts alone"
    paused = sup.cli("pause", "--lane", "gpu3").stdout
    assert "lane gpu3: paused" in paused
    assert re.search(r"^  gpu3\s+welcomed as \S+, claiming paused", sup.status(), re.MULTILINE)


def test_upgrading_to_lanes_keeps_the_first_lanes_registration(
    processes: Processes, one_offer_studio: StudioProcess, tmp_path: Path
) -> None:
    simulated_gpus(processes, tmp_path, 2)
    studio = one_offer_studio
    config = tmp_path / "worker" / "config.toml"
    write_worker_config(config, studio.api_base_url)
    before = start_supervisor(processes, config, engines=engines_on(2), name="one-lane")
    [first] = wait_welcomed(before, 1)
    assert processes.stop(before.proc) == 0
    install_id = load_config(config).install_id
    after = start_supervisor(
        processes, config, "--lanes", "per-gpu", engines=engines_on(2), name="lanes"
    )
    ids = wait_welcomed(after, 2)
    assert first in ids, "the first lane kept the worker id the one-lane worker had"
    cfg = load_config(config)
    assert (cfg.worker_id, cfg.install_id) == (first, install_id)
    assert cfg.lane["gpu1"].worker_id in ids and cfg.lane["gpu1"].worker_id != first
    assert cfg.lane["gpu1"].install_id not in (None, install_id)
    assert len(studio.client.workers()) == 2, "one new registration, for the second lane"
    done = studio.client.wait_for_job(slow_job(studio, 0).id, timeout_s=JOB_TIMEOUT_S)
    assert done.status == "done"


def test_a_revoked_lane_stops_alone_and_the_others_keep_their_jobs(
    processes: Processes, one_offer_studio: StudioProcess, tmp_path: Path
) -> None:
    studio = one_offer_studio
    sup, config = start_lanes(
        processes,
        studio,
        tmp_path,
        2,
        "--faults",
        "slow-job=3",
        expected_codes=frozenset({ExitCode.AUTH}),
    )
    wait_welcomed(sup, 2)
    cfg = load_config(config)
    kept, revoked = cfg.worker_id, cfg.lane["gpu1"].worker_id
    assert kept and revoked
    jobs = [slow_job(studio, n) for n in range(2)]
    poll_until(
        lambda: all(studio.client.get_job(j.id).accepted_at for j in jobs) or None,
        JOB_TIMEOUT_S,
        "both lanes running a job",
    )
    studio.client.revoke_worker(revoked)
    sup.proc.log.wait_for(
        re.compile(r"lane gpu1 stopped \(ws auth failed: .*\); still serving: gpu0")
    )
    final = [studio.client.wait_for_job(j.id, timeout_s=JOB_TIMEOUT_S) for j in jobs]
    assert [j.status for j in final] == ["done", "done"], "the revoked lane's job ran elsewhere"
    assert {j.claimed_by for j in final} == {kept}
    later = studio.client.wait_for_job(slow_job(studio, 9).id, timeout_s=JOB_TIMEOUT_S)
    assert (later.status, later.claimed_by) == ("done", kept)
    status = sup.status()
    assert re.search(r"^  gpu0\s+welcomed as", status, re.MULTILINE)
    assert re.search(r"stopped: ws auth failed", status)
    # The worker stops by itself once every lane has, with the auth code (no restart).
    studio.client.revoke_worker(kept)
    assert sup.proc.wait() == ExitCode.AUTH
    stopped = sup.proc.log.snapshot()[-1]
    assert "lane gpu1: ws auth failed" in stopped and "lane gpu0: ws auth failed" in stopped


def test_a_stop_asked_for_after_a_lane_was_revoked_is_a_clean_exit(
    processes: Processes, one_offer_studio: StudioProcess, tmp_path: Path
) -> None:
    sup, config = start_lanes(processes, one_offer_studio, tmp_path, 2)
    wait_welcomed(sup, 2)
    one_offer_studio.client.revoke_worker(load_config(config).lane["gpu1"].worker_id or "")
    sup.proc.log.wait_for(re.compile(r"lane gpu1 stopped \(ws auth failed"))
    assert processes.stop(sup.proc, sig=signal.SIGTERM) == ExitCode.OK
    assert "reason=SIGTERM received (lane gpu1: ws auth failed" in sup.proc.log.snapshot()[-1]


def test_start_local_with_lanes_approves_every_lane_on_its_own_studio(
    processes: Processes, tmp_path: Path
) -> None:
    simulated_gpus(processes, tmp_path, 2)
    config = tmp_path / "local" / "config.toml"
    sup = start_supervisor(
        processes,
        config,
        "--local",
        "--local-port",
        "0",
        "--one-offer-per-worker",
        "--lanes",
        "per-gpu",
        engines=engines_on(2),
    )
    ids = wait_welcomed(sup, 2)
    cfg = load_config(config)
    assert {cfg.worker_id, cfg.lane["gpu1"].worker_id} == set(ids)
    assert cfg.api_base_url.startswith("http://127.0.0.1:")
    status = sup.status()
    for lane in ("gpu0", "gpu1"):
        assert re.search(rf"^  {lane}\s+welcomed as \S+, claiming on", status, re.MULTILINE)
