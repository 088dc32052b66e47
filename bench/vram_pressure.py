"""Warm models under GPU memory pressure: the governor on and off, side by side in one run.

Not a test: it prints a table. One simulated 24 GiB card (``STUDIO_WORKER_SIMULATED_GPUS``),
two synthetic slots pinned to it (``synthetic@0,synthetic@0``), and N jobs that alternate
between two 14 GiB models, queued at once on a real local studio (``python -m localstudio``)
that offers each worker as many jobs as it advertises (two here), served by a real
``supervisor start`` with real engine host processes. Two such models never fit on the card
together. Each run counts the jobs done and failed, the out-of-memory failures the worker
reported and the models it evicted, read from its metrics endpoint:

* ``gpu_governance = true``: admission before accept, eviction before load.
* ``gpu_governance = false``: every host loads what it is given (today's behaviour without
  the governor): the second slot's load runs the card out of memory.

Target: governance on, 200/200 done and 0 out-of-memory failures.

    .venv/bin/python bench/vram_pressure.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_run import studio_and_worker
from localstudio.client import LocalStudioClient
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.config import WorkerConfig

SOURCE = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
MODELS = ("model-a", "model-b")
MODEL_GIB = 14.0


@dataclass(frozen=True)
class Outcome:
    done: int
    failed: int
    oom_failures: int
    evictions: int
    seconds: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$")
    return sum(float(m.group(2)) for line in text.splitlines() if (m := pattern.match(line)))


def run_once(root: Path, jobs: int, governed: bool) -> Outcome:
    gpus = root / "gpus.json"
    gpus.write_text(json.dumps({"devices": [{"index": 0, "name": "Sim 24G", "total_mib": 24576}]}))
    env = {
        **os.environ,
        "STUDIO_WORKER_SIMULATED_GPUS": str(gpus),
        "STUDIO_WORKER_GPU_SAMPLE_S": "0.05",
        "STUDIO_WORKER_REGISTRATION_POLL_S": "0.2",
    }
    cfg = WorkerConfig(
        models_root=root / "models",
        engines=("synthetic@0", "synthetic@0"),
        gpu_governance=governed,
        vram_threshold_gb=24.0,
        vram_headroom_mb=512,
        vram_unload_timeout_s=5.0,
    )
    metrics_port = free_port()
    start = ["--metrics", f"127.0.0.1:{metrics_port}"]
    with studio_and_worker(root, env, cfg, start) as url, LocalStudioClient(url) as client:
        _wait_for_worker(client)
        started = time.perf_counter()
        ids = [
            client.submit_job(
                MODELS[i % 2],
                LlmTask(messages=[ChatMessage("user", f"job {i}")], max_tokens=8),
                SOURCE,
                vram_gb_estimate=MODEL_GIB,
            ).id
            for i in range(jobs)
        ]
        final = [client.wait_for_job(job_id, timeout_s=600).status for job_id in ids]
        seconds = time.perf_counter() - started
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return Outcome(
        done=final.count("done"),
        failed=final.count("failed"),
        oom_failures=int(metric(text, "studio_worker_job_failures_total", 'reason="vram_oom"')),
        evictions=int(metric(text, "studio_worker_model_evictions_total")),
        seconds=seconds,
    )


def _wait_for_worker(client: LocalStudioClient) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(w.connected for w in client.workers()):
            return
        time.sleep(0.2)
    raise SystemExit("the worker did not connect to the local studio within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.jobs} jobs alternating two {MODEL_GIB:g} GiB models, 2 slots, 1 x 24 GiB card")
    print(f"{'governance':<12}{'done':>8}{'failed':>8}{'OOM fails':>11}{'evictions':>11}{'s':>8}")
    for governed in (True, False):
        with tempfile.TemporaryDirectory(prefix="vram-pressure-") as tmp:
            out = run_once(Path(tmp), args.jobs, governed)
        label = "on" if governed else "off"
        print(
            f"{label:<12}{out.done:>8}{out.failed:>8}{out.oom_failures:>11}"
            f"{out.evictions:>11}{out.seconds:>8.1f}"
        )


if __name__ == "__main__":
    main()
