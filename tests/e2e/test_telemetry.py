"""Opt-in telemetry end to end: the local studio, ``supervisor start --engines synthetic``
with ``SENTRY_DSN`` pointing at a real HTTP server that plays Sentry's ingest endpoint.

An engine host that dies mid-job arrives as one event with the facts of the loss (engine,
slot, cause, exit code, stderr tail, the job's kind and model) and none of the secrets or
the prompt, even though the dying engine printed the prompt on stderr. With the endpoint
hanging on every request, jobs run and the supervisor stops as fast as without it.
"""

from __future__ import annotations

from pathlib import Path

from localstudio.client import LocalStudioClient
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.config import load_config
from tests.support.contract_harness import (
    Processes,
    StudioProcess,
    start_supervisor,
    write_worker_config,
)
from tests.support.sentry_ingest import PUBLIC_KEY, sentry_ingest

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
PROMPT = "describe the secret garden behind the old mill in three words"
LOCAL_TOKEN = "local-api-token-2c4e6a8b"


def run_llm(client: LocalStudioClient, text: str, model: str):  # type: ignore[no-untyped-def]
    task = LlmTask(messages=[ChatMessage("user", text)], max_tokens=8)
    job = client.submit_job(model, task, SYNTHETIC)
    return client.wait_for_job(job.id, timeout_s=120.0)


def test_a_host_crash_arrives_as_one_scrubbed_event(
    processes: Processes, studio: StudioProcess, tmp_path: Path
) -> None:
    path = tmp_path / "worker" / "config.toml"
    write_worker_config(path, studio.api_base_url, local_api_token=LOCAL_TOKEN)
    with sentry_ingest() as ingest:
        processes.env["SENTRY_DSN"] = ingest.dsn
        sup = start_supervisor(processes, path)
        sup.wait_welcomed()
        job = run_llm(studio.client, PROMPT, "synthetic-crash")
        assert job.status == "failed", job  # two host losses, then refused as poison
        event = ingest.wait_for_event(lambda e: "engine_host" in e.get("contexts", {}))
        token = load_config(path).auth_token
        assert processes.stop(sup.proc) == 0
        raw = ingest.all_bytes()
    loss = event["contexts"]["engine_host"]
    assert loss["engine"] == "synthetic" and loss["slot"] == "synthetic-default-0"
    assert loss["exit_code"] == 3 and loss["signal"] is None
    assert (loss.get("job_kind"), loss.get("model")) == ("llm", "synthetic-crash"), loss
    assert any("dying while generating: [prompt]" in line for line in loss["stderr_tail"]), loss
    assert event["tags"]["engine"] == "synthetic"
    assert event["level"] == "error"
    assert token and LOCAL_TOKEN
    for secret in (token, LOCAL_TOKEN, PROMPT, ingest.dsn, PUBLIC_KEY):
        assert secret.encode() not in raw, secret


def test_a_hanging_endpoint_blocks_neither_jobs_nor_the_stop(
    processes: Processes, studio: StudioProcess, tmp_path: Path
) -> None:
    path = tmp_path / "worker" / "config.toml"
    write_worker_config(path, studio.api_base_url)
    with sentry_ingest(delay_s=60.0) as ingest:
        processes.env["SENTRY_DSN"] = ingest.dsn
        sup = start_supervisor(processes, path)
        sup.wait_welcomed()
        crashed = run_llm(studio.client, "first", "synthetic-crash")
        assert crashed.status == "failed", crashed
        good = run_llm(studio.client, "second", "synthetic")
        assert good.status == "done", good.error
        assert ingest.requests >= 1  # an event is stuck in the endpoint
        assert processes.stop(sup.proc) == 0
