"""Lanes: every GPU busy under a studio that offers a worker one job at a time.

Not a test: it prints a table. Four simulated GPUs (``STUDIO_WORKER_SIMULATED_GPUS``), one
synthetic slot on each (``synthetic@0,...,synthetic@3``), a real local studio in
``--one-offer-per-worker`` mode (the real studio's rule: the next offer only after the last
job ended, seeds flows.md §3) and a real ``supervisor start`` with its engine hosts. N jobs
of about 1 s (``synthetic-slow`` with ``--faults slow-job=1``) are queued at once and
served twice, side by side in one run:

* ``--lanes one``: one studio identity for the four slots (the Rust worker's shape): the
  studio keeps one job in flight, so three GPUs idle.
* ``--lanes per-gpu``: one identity per GPU, each approved by the (auto-approving) studio.

It prints, for each, jobs done, wall time, jobs/s and the peak number of jobs running at
once (from the studio's accept and finish times), then the ratio. Target: per-gpu at least
3.5x the one-lane throughput.

    .venv/bin/python bench/lanes.py [--jobs 200] [--baseline-jobs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_run import studio_and_worker
from localstudio.api_types import JobView
from localstudio.client import LocalStudioClient
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.config import WorkerConfig

SOURCE = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
GPUS = 4
JOB_S = 1.0


@dataclass(frozen=True)
class Outcome:
    done: int
    seconds: float
    peak: int

    @property
    def jobs_per_s(self) -> float:
        return self.done / self.seconds


def peak_concurrency(jobs: list[JobView]) -> int:
    edges: list[tuple[datetime, int]] = []
    for job in jobs:
        if job.accepted_at and job.finished_at:
            edges.append((datetime.fromisoformat(job.accepted_at), 1))
            edges.append((datetime.fromisoformat(job.finished_at), -1))
    running = peak = 0
    for _, step in sorted(edges):
        running += step
        peak = max(peak, running)
    return peak


def run_once(root: Path, jobs: int, lanes: str) -> Outcome:
    gpus = root / "gpus.json"
    devices = [{"index": i, "name": "Sim 24G", "total_mib": 24576} for i in range(GPUS)]
    gpus.write_text(json.dumps({"devices": devices}))
    env = {
        **os.environ,
        "STUDIO_WORKER_SIMULATED_GPUS": str(gpus),
        "STUDIO_WORKER_REGISTRATION_POLL_S": "0.2",
        "STUDIO_WORKER_FAULTS": "1",  # the synthetic-slow model id
    }
    cfg = WorkerConfig(models_root=root / "models")
    engines = ",".join(f"synthetic@{i}" for i in range(GPUS))
    start = ["--engines", engines, "--lanes", lanes, "--faults", f"slow-job={JOB_S:g}"]
    with (
        studio_and_worker(root, env, cfg, start, ["--one-offer-per-worker"]) as url,
        LocalStudioClient(url) as client,
    ):
        _wait_for_workers(client, GPUS if lanes == "per-gpu" else 1)
        started = time.perf_counter()
        ids = [
            client.submit_job(
                "synthetic-slow",
                LlmTask(messages=[ChatMessage("user", f"job {i}")], max_tokens=4),
                SOURCE,
                vram_gb_estimate=1.0,
            ).id
            for i in range(jobs)
        ]
        final = [client.wait_for_job(job_id, timeout_s=jobs * JOB_S * 4) for job_id in ids]
        seconds = time.perf_counter() - started
    done = [j for j in final if j.status == "done"]
    return Outcome(len(done), seconds, peak_concurrency(done))


def _wait_for_workers(client: LocalStudioClient, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(1 for w in client.workers() if w.connected) >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"{count} worker session(s) did not connect to the local studio in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs for --lanes per-gpu")
    parser.add_argument("--baseline-jobs", type=int, default=200, help="jobs for --lanes one")
    args = parser.parse_args()
    print(f"jobs of ~{JOB_S:g} s, {GPUS} simulated GPUs, one synthetic slot each, one offer per")
    print("worker at a time (the studio's rule)")
    print(f"{'lanes':<10}{'jobs':>6}{'done':>6}{'s':>8}{'jobs/s':>8}{'peak':>6}")
    results = {}
    for lanes, jobs in (("one", args.baseline_jobs), ("per-gpu", args.jobs)):
        with tempfile.TemporaryDirectory(prefix="lanes-bench-") as tmp:
            out = run_once(Path(tmp), jobs, lanes)
        results[lanes] = out
        print(
            f"{lanes:<10}{jobs:>6}{out.done:>6}{out.seconds:>8.1f}"
            f"{out.jobs_per_s:>8.2f}{out.peak:>6}"
        )
    ratio = results["per-gpu"].jobs_per_s / results["one"].jobs_per_s
    print(f"per-gpu / one throughput: {ratio:.2f}x (target >= 3.5x)")


if __name__ == "__main__":
    main()
