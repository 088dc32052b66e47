"""protocol.md §6.2: the registration state machine and ensure_registered, against a real
HTTP server. Every tick is one round trip; what must survive a restart is on disk."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from protocol.studio import Capabilities, RegisterRequest, RegisterRequestAccepted
from supervisor import USER_AGENT
from supervisor.config import WorkerConfig, load_config, save_config
from supervisor.errors import (
    ConfigError,
    RegistrationAbortedError,
    RegistrationRejectedError,
    UrlError,
)
from supervisor.studio.http import StudioHttp
from supervisor.studio.registration import (
    Approved,
    Pending,
    Pristine,
    Registrar,
    Rejected,
    ensure_registered,
    new_install_id,
    new_registration_secret,
    secret_hash,
)
from tests.support.fake_studio import FakeStudio, Reply, running_studio

pytestmark = pytest.mark.anyio

REGISTER = "/graphics/api/workers/register-request"
DEADLINE_S = 10
TOKEN = "tok-SECRET-issued-by-studio"


def poll_path(request_id: str) -> str:
    return f"/graphics/api/workers/register-requests/{request_id}"


def accepted(request_id: str) -> Reply:
    return Reply(200, {"requestId": request_id, "status": "pending"})


APPROVED = Reply(200, {"status": "approved", "workerId": "w-real-42", "authToken": TOKEN})
PENDING = Reply(200, {"status": "pending"})


def capabilities_for(cfg: WorkerConfig) -> Capabilities:
    return Capabilities(
        machine_name="box",
        username="op",
        agent_version="0.5.0",
        engine="multi",
        vram_total_gb=24.0,
        vram_threshold_gb=cfg.vram_threshold_gb,
        auto_enabled=True,
        auto_start=cfg.auto_start,
    )


class FixedClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def studio() -> Iterator[FakeStudio]:
    with running_studio() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[StudioHttp]:
    async with StudioHttp(retry_pause_s=0.01) as client:
        yield client


@pytest.fixture
def cfg_path(tmp_path: Path, studio: FakeStudio) -> Path:
    path = tmp_path / "config.toml"
    save_config(path, WorkerConfig(api_base_url=studio.base_url, vram_threshold_gb=9.5))
    return path


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def registrar(cfg_path: Path, http: StudioHttp, clock: FixedClock) -> Registrar:
    return Registrar(cfg_path, load_config(cfg_path), http, capabilities_for, clock=clock)


async def tick(registrar: Registrar) -> object:
    with anyio.fail_after(DEADLINE_S):
        return await registrar.tick()


def assert_secret_free(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for record in caplog.records:
        for secret in secrets:
            assert secret not in record.getMessage()


# --- identifiers -------------------------------------------------------------------------


def test_install_id_shape_and_uniqueness() -> None:
    ids = {new_install_id() for _ in range(50)}
    assert len(ids) == 50
    for install_id in ids:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", install_id
        )


def test_secret_shape_and_hash() -> None:
    secret = new_registration_secret()
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert secret != new_registration_secret()
    assert secret_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert secret_hash(secret) == secret_hash(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", secret_hash(secret))


# --- the state machine -------------------------------------------------------------------


async def test_first_tick_posts_and_persists_request(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path, clock: FixedClock
) -> None:
    studio.script("POST", REGISTER, accepted("rr-001"))
    assert await tick(registrar) == Pending("rr-001", clock.now)
    on_disk = load_config(cfg_path)
    assert on_disk.registration_request_id == "rr-001"
    assert on_disk.install_id is not None
    assert on_disk.registration_secret is not None
    assert on_disk.worker_id is None
    [sent] = studio.received(REGISTER)
    body = sent.json()
    assert body["installId"] == on_disk.install_id
    assert (
        body["registrationSecretHash"]
        == hashlib.sha256(on_disk.registration_secret.encode()).hexdigest()
    )
    assert body["userAgent"] == USER_AGENT
    assert body["capabilities"]["vramThresholdGb"] == 9.5
    assert on_disk.registration_secret not in sent.body.decode()


async def test_an_operator_edit_during_registration_is_not_reverted(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path
) -> None:
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), APPROVED)
    await tick(registrar)
    # While the request waits for approval, the operator changes the threshold by hand.
    edited = load_config(cfg_path)
    save_config(cfg_path, edited.replace(vram_threshold_gb=20.0), previous=edited)
    await tick(registrar)  # approved: credentials are saved
    on_disk = load_config(cfg_path)
    assert on_disk.auth_token == TOKEN
    assert on_disk.vram_threshold_gb == 20.0


async def test_pending_poll_then_approval(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path, clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), PENDING, APPROVED)
    first_seen = clock.now
    await tick(registrar)
    secret = load_config(cfg_path).registration_secret
    clock.now += timedelta(seconds=30)
    assert await tick(registrar) == Pending("rr-001", first_seen)  # since = first seen
    with caplog.at_level(logging.DEBUG):
        assert await tick(registrar) == Approved("w-real-42")
    for sent in studio.received(poll_path("rr-001")):
        assert sent.headers["authorization"] == f"Bearer {secret}"
    on_disk = load_config(cfg_path)
    assert (on_disk.worker_id, on_disk.auth_token) == ("w-real-42", TOKEN)
    assert on_disk.registration_request_id is None
    assert on_disk.registration_secret is None
    assert registrar.config == on_disk
    assert_secret_free(caplog, TOKEN)
    requests = len(studio.received())
    assert await tick(registrar) == Approved("w-real-42")
    assert len(studio.received()) == requests  # approved: no more HTTP


async def test_rejection_clears_request(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path
) -> None:
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), Reply(200, {"status": "rejected", "reason": "who?"}))
    await tick(registrar)
    assert await tick(registrar) == Rejected("who?")
    on_disk = load_config(cfg_path)
    assert on_disk.registration_request_id is None
    assert on_disk.registration_secret is None
    assert on_disk.worker_id is None


async def test_404_clears_then_next_tick_posts_a_fresh_request(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path
) -> None:
    studio.script("POST", REGISTER, accepted("rr-001"), accepted("rr-fresh"))
    studio.script("GET", poll_path("rr-001"), Reply(404, "unknown request"))
    await tick(registrar)
    old = load_config(cfg_path)
    assert await tick(registrar) == Pristine()
    cleared = load_config(cfg_path)
    assert cleared.registration_request_id is None
    assert cleared.registration_secret is None
    pending = await tick(registrar)
    assert isinstance(pending, Pending)
    assert pending.request_id == "rr-fresh"
    fresh = load_config(cfg_path)
    assert fresh.registration_request_id == "rr-fresh"
    assert fresh.registration_secret not in (None, old.registration_secret)
    assert fresh.install_id == old.install_id  # install id is stable across requests
    second_body = studio.received(REGISTER)[1].json()
    assert second_body["registrationSecretHash"] == secret_hash(fresh.registration_secret or "")


async def test_already_registered_is_approved_without_http(
    studio: FakeStudio, cfg_path: Path, http: StudioHttp
) -> None:
    cfg = load_config(cfg_path).replace(worker_id="w-1", auth_token="t-1")
    registrar = Registrar(cfg_path, cfg, http, capabilities_for)
    assert await tick(registrar) == Approved("w-1")
    assert studio.received() == []


async def test_post_500_stays_pristine_and_persists_no_request(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", REGISTER, Reply(500, "oops"), accepted("rr-002"))
    with caplog.at_level(logging.WARNING):
        assert await tick(registrar) == Pristine()
    on_disk = load_config(cfg_path)
    assert on_disk.registration_request_id is None
    assert on_disk.worker_id is None
    [warn] = [r for r in caplog.records if r.name == "supervisor.registration"]
    assert 'op="register-request"' in warn.getMessage()
    assert 'error="register-request failed: 500 Internal Server Error — oops"' in warn.getMessage()
    secret = on_disk.registration_secret
    pending = await tick(registrar)
    assert isinstance(pending, Pending)
    assert pending.request_id == "rr-002"
    assert load_config(cfg_path).registration_secret == secret  # reused, not regenerated


async def test_poll_500_keeps_the_request_id(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), Reply(500, "db down"))
    await tick(registrar)
    with caplog.at_level(logging.WARNING):
        state = await tick(registrar)
    assert isinstance(state, Pending)
    assert state.request_id == "rr-001"
    assert load_config(cfg_path).registration_request_id == "rr-001"
    [warn] = [r for r in caplog.records if r.name == "supervisor.registration"]
    assert 'op="poll"' in warn.getMessage()
    assert "error=" in warn.getMessage()


async def test_install_id_stable_across_ticks(
    studio: FakeStudio, registrar: Registrar, cfg_path: Path
) -> None:
    studio.script("POST", REGISTER, Reply(500, "oops"))
    await tick(registrar)
    install_id = load_config(cfg_path).install_id
    await tick(registrar)
    await tick(registrar)
    assert load_config(cfg_path).install_id == install_id
    bodies = [sent.json()["installId"] for sent in studio.received(REGISTER)]
    assert bodies == [install_id] * 3


async def test_request_id_without_secret_starts_over(
    studio: FakeStudio, cfg_path: Path, http: StudioHttp
) -> None:
    cfg = load_config(cfg_path).replace(registration_request_id="rr-orphan")
    studio.script("POST", REGISTER, accepted("rr-new"))
    registrar = Registrar(cfg_path, cfg, http, capabilities_for)
    state = await tick(registrar)
    assert isinstance(state, Pending)
    assert state.request_id == "rr-new"
    assert studio.received(poll_path("rr-orphan")) == []


# --- save failures -----------------------------------------------------------------------


def failing_save(path: Path, table: str | None, cfg: WorkerConfig, previous: object) -> None:
    raise ConfigError(f"saving config.toml ({path}): Read-only file system")


async def test_save_failure_after_approval_is_an_error_but_approved(
    studio: FakeStudio, registrar: Registrar, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), APPROVED)
    await tick(registrar)
    monkeypatch.setattr("supervisor.studio.registration.save_lane_config", failing_save)
    with caplog.at_level(logging.DEBUG):
        assert await tick(registrar) == Approved("w-real-42")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "failed to persist approved credentials" in errors[0].getMessage()
    assert 'op="poll"' in errors[0].getMessage()
    assert "error=" in errors[0].getMessage()
    assert registrar.config.auth_token == TOKEN  # the session can still run from memory
    assert_secret_free(caplog, TOKEN)


async def test_save_failure_after_rejection_warns(
    studio: FakeStudio, registrar: Registrar, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), Reply(200, {"status": "rejected", "reason": "no"}))
    await tick(registrar)
    monkeypatch.setattr("supervisor.studio.registration.save_lane_config", failing_save)
    with caplog.at_level(logging.WARNING):
        assert await tick(registrar) == Rejected("no")
    failed = [r for r in caplog.records if "failed to save" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.WARNING]
    assert "rejection" in failed[0].getMessage()


async def test_save_failure_after_404_warns(
    studio: FakeStudio, registrar: Registrar, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    studio.script("POST", REGISTER, accepted("rr-001"))
    studio.script("GET", poll_path("rr-001"), Reply(404, ""))
    await tick(registrar)
    monkeypatch.setattr("supervisor.studio.registration.save_lane_config", failing_save)
    with caplog.at_level(logging.WARNING):
        assert await tick(registrar) == Pristine()
    failed = [r for r in caplog.records if "failed to save" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.WARNING]
    assert "404" in failed[0].getMessage()


# --- ensure_registered -------------------------------------------------------------------


async def test_ensure_registered_passes_a_registered_config_without_http(
    studio: FakeStudio, cfg_path: Path
) -> None:
    cfg = load_config(cfg_path).replace(worker_id="w-1", auth_token="t-1")
    with anyio.fail_after(DEADLINE_S):
        result = await ensure_registered(cfg_path, cfg, capabilities_for, anyio.Event())
    assert result == cfg
    assert studio.received() == []


async def test_ensure_registered_waits_for_approval(
    studio: FakeStudio, cfg_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", REGISTER, accepted("rr-7"))
    studio.script("GET", poll_path("rr-7"), PENDING, PENDING, APPROVED)
    with caplog.at_level(logging.INFO), anyio.fail_after(DEADLINE_S):
        cfg = await ensure_registered(
            cfg_path, load_config(cfg_path), capabilities_for, anyio.Event(), poll_interval_s=0.01
        )
    assert (cfg.worker_id, cfg.auth_token) == ("w-real-42", TOKEN)
    assert load_config(cfg_path) == cfg
    assert caplog.text.count("waiting for operator approval (request rr-7)") == 1
    assert_secret_free(caplog, TOKEN)


async def test_ensure_registered_rejection(studio: FakeStudio, cfg_path: Path) -> None:
    studio.script("POST", REGISTER, accepted("rr-7"))
    studio.script("GET", poll_path("rr-7"), Reply(200, {"status": "rejected", "reason": "nope"}))
    with anyio.fail_after(DEADLINE_S), pytest.raises(RegistrationRejectedError) as excinfo:
        await ensure_registered(
            cfg_path, load_config(cfg_path), capabilities_for, anyio.Event(), poll_interval_s=0.01
        )
    assert str(excinfo.value) == (
        "registration rejected by the studio operator: nope.  Run `supervisor register --reset`"
        " to clear local state and submit a fresh request."
    )
    assert excinfo.value.reason == "nope"


async def test_ensure_registered_stop_before_start(studio: FakeStudio, cfg_path: Path) -> None:
    stop = anyio.Event()
    stop.set()
    with anyio.fail_after(DEADLINE_S), pytest.raises(RegistrationAbortedError) as excinfo:
        await ensure_registered(cfg_path, load_config(cfg_path), capabilities_for, stop)
    assert str(excinfo.value) == "shutdown before registration completed"
    assert studio.received() == []


async def test_ensure_registered_stop_during_a_tick(studio: FakeStudio, cfg_path: Path) -> None:
    stop = anyio.Event()
    studio.script("POST", REGISTER, accepted("rr-7"))

    def capabilities_then_stop(cfg: WorkerConfig) -> Capabilities:
        stop.set()  # the request is about to go out; stop must abandon it
        return capabilities_for(cfg)

    with anyio.fail_after(DEADLINE_S), pytest.raises(RegistrationAbortedError):
        await ensure_registered(cfg_path, load_config(cfg_path), capabilities_then_stop, stop)
    assert load_config(cfg_path).registration_request_id is None


class SignallingHttp(StudioHttp):
    """The real client, plus an event once a register request has been answered."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = anyio.Event()

    async def register_request(self, base: str, body: RegisterRequest) -> RegisterRequestAccepted:
        result = await super().register_request(base, body)
        self.requested.set()
        return result


async def test_ensure_registered_stop_during_the_wait(studio: FakeStudio, cfg_path: Path) -> None:
    studio.script("POST", REGISTER, accepted("rr-7"))
    stop = anyio.Event()
    errors: list[BaseException] = []

    async def register(http: StudioHttp) -> None:
        try:
            await ensure_registered(
                cfg_path, load_config(cfg_path), capabilities_for, stop, 3600.0, http=http
            )
        except RegistrationAbortedError as exc:
            errors.append(exc)

    with anyio.fail_after(DEADLINE_S):
        async with SignallingHttp() as http, anyio.create_task_group() as tg:
            tg.start_soon(register, http)
            await http.requested.wait()
            stop.set()
    assert [str(e) for e in errors] == ["shutdown before registration completed"]
    assert load_config(cfg_path).registration_request_id == "rr-7"
    assert studio.received(poll_path("rr-7")) == []


async def test_ensure_registered_rejects_an_unusable_url_up_front(tmp_path: Path) -> None:
    cfg = WorkerConfig(api_base_url="not a url")
    with anyio.fail_after(DEADLINE_S), pytest.raises(UrlError, match="invalid api_base_url"):
        await ensure_registered(tmp_path / "config.toml", cfg, capabilities_for, anyio.Event())


async def test_ensure_registered_raises_config_error_unwrapped(
    studio: FakeStudio, cfg_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("supervisor.studio.registration.save_lane_config", failing_save)
    with anyio.fail_after(DEADLINE_S), pytest.raises(ConfigError, match="Read-only"):
        await ensure_registered(cfg_path, load_config(cfg_path), capabilities_for, anyio.Event())
    assert studio.received() == []  # install state could not be kept: nothing was sent
