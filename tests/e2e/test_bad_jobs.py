"""Bad jobs cannot take the worker out, end to end with real processes only: the local
studio (``python -m localstudio``) and ``supervisor start --engines synthetic``.

Three bad jobs, each crashing the only slot's host on every attempt, are failed for good
while the slot keeps serving (their six host losses are the jobs' strikes, not a crash
loop); a JSON result too large for one studio frame fails its job final instead of dropping
the session. Nothing sleeps to wait: jobs are awaited with the studio's long poll.
"""

from __future__ import annotations

import re
from pathlib import Path

from localstudio.client import LocalStudioClient
from localstudio.jobs import DEFAULT_MAX_ATTEMPTS
from protocol.studio import DEFAULT_MAX_FRAME_BYTES
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from tests.support.contract_harness import (
    Processes,
    StudioProcess,
    job_outcomes,
    slot_lines,
    start_supervisor,
    write_worker_config,
)

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
JOB_TIMEOUT_S = 120.0


def run_llm(client: LocalStudioClient, text: str, model: str = "synthetic"):  # type: ignore[no-untyped-def]
    task = LlmTask(messages=[ChatMessage("user", text)], max_tokens=8)
    job = client.submit_job(model, task, SYNTHETIC)
    return client.wait_for_job(job.id, timeout_s=JOB_TIMEOUT_S)


def reconnects(status_text: str) -> int:
    match = re.search(r"^reconnects:\s+(\d+)", status_text, re.MULTILINE)
    assert match, status_text
    return int(match.group(1))


def test_three_bad_jobs_fail_for_good_and_never_park_the_only_slot(
    processes: Processes, studio: StudioProcess, tmp_path: Path
) -> None:
    path = tmp_path / "worker" / "config.toml"
    # The default crash loop: 5 losses within 60 s park a slot. Six follow here, in seconds.
    write_worker_config(path, studio.api_base_url)
    sup = start_supervisor(processes, path, engines="synthetic")
    sup.wait_welcomed()
    for model in ("synthetic-crash", "synthetic-segv", "synthetic-abort"):
        job = run_llm(studio.client, f"bad input for {model}", model)
        assert job.status == "failed", job
        assert job.attempts == DEFAULT_MAX_ATTEMPTS  # two crashes, then refused as poison
        assert job.error is not None and "has already taken down an engine host twice" in (
            job.error
        )
    status = sup.status()
    (row,) = slot_lines(status)[:1]
    assert row.split()[1] == "ready", status
    assert sup.proc.log.count("parked") == 0
    good = run_llm(studio.client, "a good job")
    assert (good.status, good.attempts) == ("done", 0), good.error
    outcomes = job_outcomes(sup.status())
    assert outcomes.get("failed_retryable") == 6 and outcomes.get("failed_final") == 3


def test_a_16_mib_prompt_fails_its_job_final_and_keeps_the_session(
    processes: Processes, studio: StudioProcess, tmp_path: Path
) -> None:
    path = tmp_path / "worker" / "config.toml"
    write_worker_config(path, studio.api_base_url)
    sup = start_supervisor(processes, path, engines="synthetic")
    sup.wait_welcomed()
    job = run_llm(studio.client, "x" * DEFAULT_MAX_FRAME_BYTES)
    assert job.status == "failed", job
    assert job.attempts == 1, "failed final at once: never retried"
    assert job.error is not None
    assert f"over the studio's frame limit of {DEFAULT_MAX_FRAME_BYTES} bytes" in job.error
    good = run_llm(studio.client, "a small one")
    assert good.status == "done", good.error
    assert reconnects(sup.status()) == 0, "the session was never dropped"
