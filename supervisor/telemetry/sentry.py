"""Turning the Sentry SDK on (only with a DSN) and everything it sends scrubbed.

Sent: unhandled exceptions, the supervisor's error-level log records (an engine host lost
is one: ``pool/slot.py`` attaches the facts as ``host_loss``), warn-level records as
breadcrumbs. Never sent: local variables, the prompt, any secret (``scrub.py``). Sending
happens on the SDK's own thread with a bounded queue, so a slow or absent endpoint costs a
dropped event, never a blocked session or job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

from protocol.tasks import Task
from supervisor import __version__
from supervisor.config import WorkerConfig
from supervisor.errors import WorkerError
from supervisor.machine_facts import machine_name
from supervisor.telemetry.memory import PromptMemory, SecretSource, config_secrets
from supervisor.telemetry.scrub import Scrubber

log = logging.getLogger("supervisor.telemetry")

DSN_ENV: Final = "SENTRY_DSN"
ENGINE_PACKAGES: Final = {"llama": "llama-cpp-python", "sdcpp": "stable-diffusion-cpp-python"}
# At exit the SDK waits this long at most for queued events (a dead endpoint must not hold
# a stop, or systemd's TimeoutStopSec, hostage).
SHUTDOWN_TIMEOUT_S: Final = 2.0
HOST_LOSS_KEY: Final = "host_loss"
# The fields of every task kind that carry what a user wrote or pointed at.
TASK_TEXT_FIELDS: Final = (
    "prompt",
    "negative_prompt",
    "system",
    "text",
    "input_url",
    "init_image_url",
    "mask_url",
    "ref_image_url",
)


def telemetry_dsn(cfg: WorkerConfig, environ: Mapping[str, str]) -> str | None:
    """``SENTRY_DSN`` first (the seed's switch), then the config's ``telemetry_dsn``."""
    dsn = environ.get(DSN_ENV, "").strip() or (cfg.telemetry_dsn or "").strip()
    return dsn or None


def engine_versions() -> dict[str, str]:
    found = {}
    for engine, package in ENGINE_PACKAGES.items():
        try:
            found[engine] = version(package)
        except PackageNotFoundError:
            continue
    return found


@dataclass
class Telemetry:
    """The running telemetry: what the session feeds it (prompts) and the scrubber."""

    prompts: PromptMemory
    secrets: SecretSource
    scrubber: Scrubber

    def before_send(self, event: Any, hint: Any) -> Any:
        del hint
        extra = event.get("extra")
        loss = extra.pop(HOST_LOSS_KEY, None) if isinstance(extra, dict) else None
        if isinstance(loss, dict):
            # A host loss is its own kind of event: grouped by engine and cause, not by the
            # text of the log line (which carries a pid).
            event.setdefault("contexts", {})["engine_host"] = loss
            event.setdefault("tags", {}).update(
                {"engine": loss.get("engine"), "host_loss_cause": loss.get("cause")}
            )
            event["fingerprint"] = ["engine-host-lost", loss.get("engine"), loss.get("cause")]
        event.pop("request", None)  # never an HTTP request's headers or body
        self.secrets()  # re-reads the config if it changed: its worker ids too
        if self.secrets.worker_ids:  # registration may have come after the start
            tags = event.setdefault("tags", {})
            tags["worker_id"] = self.secrets.worker_ids[0]
            if len(self.secrets.worker_ids) > 1:
                tags["lane_worker_ids"] = ",".join(self.secrets.worker_ids[1:])
        return self.scrubber.value(event)

    def before_breadcrumb(self, crumb: Any, hint: Any) -> Any:
        del hint
        return self.scrubber.value(crumb)

    def remember_prompt(self, prompt: str | None) -> None:
        self.prompts.remember(prompt)


_ACTIVE: Telemetry | None = None


def active() -> Telemetry | None:
    return _ACTIVE


def start_telemetry(
    cfg: WorkerConfig,
    config_path: Path,
    environ: Mapping[str, str] = os.environ,
    secret_files: tuple[Path, ...] = (),
) -> Telemetry | None:
    """Initialise the SDK when a DSN is set; without one, nothing is initialised at all.
    ``secret_files``: files whose content is a secret (the status page's), read as they
    change."""
    global _ACTIVE
    dsn = telemetry_dsn(cfg, environ)
    if dsn is None:
        log.debug("telemetry off (no %s, no telemetry_dsn)", DSN_ENV)
        return None
    # Imported here: the SDK costs a worker without a DSN nothing, not even its import.
    import sentry_sdk
    from sentry_sdk.integrations.atexit import AtexitIntegration
    from sentry_sdk.integrations.dedupe import DedupeIntegration
    from sentry_sdk.integrations.excepthook import ExcepthookIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.threading import ThreadingIntegration

    key = dsn.split("://", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    secrets = SecretSource(config_path, {dsn, key} | config_secrets(cfg), secret_files)
    prompts = PromptMemory()
    telemetry = Telemetry(prompts, secrets, Scrubber(secrets, prompts))
    sentry_sdk.init(
        dsn=dsn,
        release=f"studio-worker@{__version__}",
        server_name=machine_name(),
        include_local_variables=False,
        include_source_context=False,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.WARNING, event_level=logging.ERROR),
            ExcepthookIntegration(),
            ThreadingIntegration(),
            DedupeIntegration(),
            AtexitIntegration(callback=lambda pending, timeout: None),
        ],
        before_send=telemetry.before_send,
        before_breadcrumb=telemetry.before_breadcrumb,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    sentry_sdk.set_tag("worker_id", cfg.worker_id or "unregistered")
    for engine, engine_version in engine_versions().items():
        sentry_sdk.set_tag(f"engine.{engine}", engine_version)
    _ACTIVE = telemetry
    log.info("telemetry on: errors and engine host losses go to Sentry (scrubbed)")
    return telemetry


def capture_crash(exc: BaseException) -> None:
    """An exception that ends ``start`` unhandled (a bug, not a WorkerError refusal)."""
    if _ACTIVE is not None and not isinstance(exc, WorkerError):
        import sentry_sdk

        sentry_sdk.capture_exception(exc)


def stop_telemetry() -> None:
    """Send what is queued (at most ``SHUTDOWN_TIMEOUT_S``) and turn the SDK off."""
    global _ACTIVE
    if _ACTIVE is None:
        return
    _ACTIVE = None
    import sentry_sdk

    client = sentry_sdk.get_client()
    client.close(timeout=SHUTDOWN_TIMEOUT_S)
    sentry_sdk.get_global_scope().set_client(None)


def remember_task(task: Task) -> None:
    """Every text of an offered job that could be echoed back (prompts, messages, input
    URLs), for the scrubber; a no-op with telemetry off."""
    if _ACTIVE is None:
        return
    for name in TASK_TEXT_FIELDS:
        value = getattr(task, name, None)
        if isinstance(value, str):
            _ACTIVE.remember_prompt(value)
    for message in getattr(task, "messages", None) or ():
        _ACTIVE.remember_prompt(message.content)
