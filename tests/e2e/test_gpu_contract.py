"""GPU memory governance the way the real studio offers: a real local studio in
``--one-offer-per-worker`` mode (seeds flows.md §3: the next offer only after the last job
ended), a real ``supervisor start`` and its engine hosts, one simulated 24 GiB card and two
slots on it. Jobs alternate between two 14 GiB models, which never fit together: every job
is done, none runs out of memory, and the worker evicts to make room."""

from __future__ import annotations

import json
import re
from pathlib import Path

from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from tests.support.contract_harness import (
    Processes,
    start_studio,
    start_supervisor,
    write_worker_config,
)

SOURCE = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
JOBS = 8


def test_alternating_big_models_under_the_real_offer_rule(
    processes: Processes, tmp_path: Path
) -> None:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps({"devices": [{"index": 0, "name": "Sim 24G", "total_mib": 24576}]}))
    processes.env["STUDIO_WORKER_SIMULATED_GPUS"] = str(gpus)
    processes.env["STUDIO_WORKER_GPU_SAMPLE_S"] = "0.05"
    studio = start_studio(processes, tmp_path / "studio", one_offer_per_worker=True)
    config = tmp_path / "worker" / "config.toml"
    write_worker_config(config, studio.api_base_url, vram_threshold_gb=24.0, vram_headroom_mb=512)
    sup = start_supervisor(processes, config, engines="synthetic@0,synthetic@0")
    sup.wait_welcomed()
    with studio.client as client:
        jobs = [
            client.submit_job(
                f"model-{'ab'[i % 2]}",
                LlmTask(messages=[ChatMessage("user", f"job {i}")], max_tokens=8),
                SOURCE,
                vram_gb_estimate=14.0,
            )
            for i in range(JOBS)
        ]
        final = [client.wait_for_job(job.id, timeout_s=120) for job in jobs]
    assert [j.status for j in final] == ["done"] * JOBS
    assert all(j.attempts == 0 for j in final), "no job failed and was retried"
    status = sup.status()
    assert "vram_oom" not in status
    match = re.search(r"gpu 0: healthy Sim 24G \S+ total 24.0GiB.*evictions (\d+)", status)
    assert match is not None, status
    assert int(match.group(1)) >= JOBS - 1, "each alternation unloaded the other model"
