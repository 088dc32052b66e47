"""The real sentry-sdk against a real HTTP server playing Sentry's ingest endpoint, in this
process: an error log and an unhandled exception arrive as events, scrubbed; without a DSN
nothing is initialised; a slow or absent endpoint never blocks the caller."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk

from protocol.tasks import ImageTask
from supervisor import __version__
from supervisor.config import WorkerConfig, save_config
from supervisor.telemetry.sentry import (
    capture_crash,
    remember_task,
    start_telemetry,
    stop_telemetry,
)
from tests.support.sentry_ingest import PUBLIC_KEY, sentry_ingest

TOKEN = "tok-live-5f2b9c0d1e3a4b6c"
REG_SECRET = "regsecret-8d7c6b5a4f3e"
LOCAL_TOKEN = "local-api-4a5b6c7d8e9f"
PROMPT = "an astronaut knitting a scarf on the moon, oil painting"

log = logging.getLogger("supervisor.telemetry_test")


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    save_config(
        path,
        WorkerConfig(
            worker_id="worker-7",
            auth_token=TOKEN,
            registration_secret=REG_SECRET,
            local_api_token=LOCAL_TOKEN,
        ),
    )
    return path


@pytest.fixture(autouse=True)
def _telemetry_closed() -> Iterator[None]:
    yield
    stop_telemetry()
    assert not sentry_sdk.get_client().is_active()


def _cfg(path: Path) -> WorkerConfig:
    from supervisor.config import load_config

    return load_config(path)


def test_an_error_log_arrives_as_an_event_with_every_secret_and_the_prompt_gone(
    config_path: Path,
) -> None:
    with sentry_ingest() as ingest:
        start_telemetry(_cfg(config_path), config_path, {"SENTRY_DSN": ingest.dsn})
        remember_task(ImageTask(prompt=PROMPT))
        log.warning("slow answer from https://worker:%s@studio.example/ws", TOKEN)
        log.error(
            "upload failed for %s (token %s, secret %s, local %s, dsn %s)",
            PROMPT,
            TOKEN,
            REG_SECRET,
            LOCAL_TOKEN,
            ingest.dsn,
        )
        stop_telemetry()  # flushes
        event = ingest.wait_for_event(lambda e: e.get("level") == "error")
        raw = ingest.all_bytes()
    for secret in (TOKEN, REG_SECRET, LOCAL_TOKEN, PROMPT, ingest.dsn, PUBLIC_KEY):
        assert secret.encode() not in raw, secret
    assert event["release"] == f"studio-worker@{__version__}"
    assert event["tags"]["worker_id"] == "worker-7"
    assert event["server_name"]
    assert "[prompt]" in event["logentry"]["formatted"]
    crumbs = event["breadcrumbs"]["values"]
    assert any(
        c["level"] == "warning" and "[redacted]@studio.example" in c["message"] for c in crumbs
    )


def test_a_secret_file_and_a_token_written_after_the_start_are_scrubbed(
    config_path: Path, tmp_path: Path
) -> None:
    page_secret = tmp_path / "control.secret"
    with sentry_ingest() as ingest:
        start_telemetry(
            _cfg(config_path), config_path, {"SENTRY_DSN": ingest.dsn}, secret_files=(page_secret,)
        )
        page_secret.write_text("page-secret-0a1b2c3d4e\n")  # written once the page starts
        save_config(config_path, WorkerConfig(worker_id="worker-8", auth_token="tok-rotated-99z"))
        log.error("headers: x-worker-secret page-secret-0a1b2c3d4e, token tok-rotated-99z")
        stop_telemetry()
        event = ingest.wait_for_event(lambda e: e.get("level") == "error")
        raw = ingest.all_bytes()
    assert b"page-secret-0a1b2c3d4e" not in raw and b"tok-rotated-99z" not in raw
    assert TOKEN.encode() not in raw  # the old token stays a secret
    assert event["tags"]["worker_id"] == "worker-8"  # registration after the start


def test_an_unhandled_exception_arrives_without_local_variables(config_path: Path) -> None:
    with sentry_ingest() as ingest:
        start_telemetry(_cfg(config_path), config_path, {"SENTRY_DSN": ingest.dsn})
        try:
            secret_local = TOKEN  # noqa: F841 -- a local that must not leave
            raise RuntimeError("the pool's bookkeeping went wrong")
        except RuntimeError as exc:
            capture_crash(exc)
        stop_telemetry()
        event = ingest.wait_for_event(lambda e: "exception" in e)
        raw = ingest.all_bytes()
    (value,) = event["exception"]["values"]
    assert value["type"] == "RuntimeError"
    assert all("vars" not in frame for frame in value["stacktrace"]["frames"])
    assert TOKEN.encode() not in raw


def test_without_a_dsn_nothing_is_initialised(config_path: Path) -> None:
    assert start_telemetry(_cfg(config_path), config_path, {}) is None
    assert not sentry_sdk.get_client().is_active()
    log.error("this goes nowhere")
    assert not sentry_sdk.get_client().is_active()


def test_telemetry_dsn_in_the_config_turns_it_on_and_is_a_secret(tmp_path: Path) -> None:
    with sentry_ingest() as ingest:
        path = tmp_path / "config.toml"
        save_config(path, WorkerConfig(telemetry_dsn=ingest.dsn))
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert "<redacted>" in repr(_cfg(path)) and ingest.dsn not in repr(_cfg(path))
        assert start_telemetry(_cfg(path), path, {}) is not None
        log.error("via the config's dsn")
        stop_telemetry()
        ingest.wait_for_event(lambda e: e.get("level") == "error")


def test_a_slow_endpoint_or_none_at_all_never_blocks_the_caller(config_path: Path) -> None:
    with sentry_ingest(delay_s=20.0) as slow:
        start_telemetry(_cfg(config_path), config_path, {"SENTRY_DSN": slow.dsn})
        began = time.monotonic()
        for i in range(50):
            log.error("error %d while the endpoint hangs", i)
        logged_s = time.monotonic() - began
        stopped = time.monotonic()
        stop_telemetry()
        stop_s = time.monotonic() - stopped
        assert slow.requests >= 1  # it did try
    assert logged_s < 5.0, logged_s  # 50 errors queued, none waited for the 20 s answer
    assert stop_s < 5.0, stop_s  # the close waits its 2 s at most
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start_telemetry(_cfg(config_path), config_path, {"SENTRY_DSN": f"http://k@127.0.0.1:{port}/1"})
    began = time.monotonic()
    log.error("the endpoint is down")
    stop_telemetry()
    assert time.monotonic() - began < 5.0  # refused connections cost nothing to the caller
