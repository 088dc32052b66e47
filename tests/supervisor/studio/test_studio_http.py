"""protocol.md §6.1/§6.3 against a real HTTP server: bodies, headers, errors, retries, logs."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from protocol.studio import (
    Capabilities,
    RegisterRequest,
    RegistrationApproved,
    RegistrationPending,
    RegistrationRejected,
)
from supervisor import USER_AGENT, __version__
from supervisor.errors import (
    StudioHttpError,
    StudioResponseError,
    StudioTransportError,
)
from supervisor.studio.http import StudioHttp, mime_for_ext
from tests.support.fake_studio import FakeStudio, Reply, parse_multipart, running_studio

pytestmark = pytest.mark.anyio

REGISTER = "/graphics/api/workers/register-request"
POLL = "/graphics/api/workers/register-requests/rr-abc-123"
COMPLETE = "/graphics/api/workers/w-1/jobs/job-9/complete"
TOKEN = "tok-SECRET-issued"
SECRET = "reg-SECRET-raw"
DEADLINE_S = 10


@pytest.fixture
def studio() -> Iterator[FakeStudio]:
    with running_studio() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[StudioHttp]:
    async with StudioHttp(retry_pause_s=0.01) as client:
        yield client


def capabilities() -> Capabilities:
    return Capabilities(
        machine_name="box",
        username="op",
        agent_version=__version__,
        engine="multi",
        vram_total_gb=24.0,
        vram_threshold_gb=12.0,
        auto_enabled=True,
        auto_start=True,
    )


def register_body() -> RegisterRequest:
    return RegisterRequest(
        install_id="11111111-2222-3333-4444-555555555555",
        registration_secret_hash=hashlib.sha256(SECRET.encode()).hexdigest(),
        capabilities=capabilities(),
        user_agent=USER_AGENT,
    )


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def secret_free(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert SECRET not in record.getMessage()


# --- register-request ----------------------------------------------------------------------


async def test_register_request_sends_the_rust_body(studio: FakeStudio, http: StudioHttp) -> None:
    studio.script("POST", REGISTER, Reply(200, {"requestId": "rr-abc-123", "status": "pending"}))
    with anyio.fail_after(DEADLINE_S):
        accepted = await http.register_request(studio.base_url + "graphics/api/", register_body())
    assert (accepted.request_id, accepted.status) == ("rr-abc-123", "pending")
    [sent] = studio.received(REGISTER)
    assert sent.method == "POST"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"] == f"studio-worker/{__version__}"
    assert "authorization" not in sent.headers
    body = sent.json()
    assert list(body) == ["installId", "registrationSecretHash", "capabilities", "userAgent"]
    assert body["registrationSecretHash"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert body["capabilities"]["machineName"] == "box"
    assert "userPresence" not in body["capabilities"]
    assert body["userAgent"] == USER_AGENT


async def test_register_request_429_mentions_the_status(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", REGISTER, Reply(429, "slow down"))
    with (
        caplog.at_level(logging.WARNING),
        anyio.fail_after(DEADLINE_S),
        pytest.raises(StudioHttpError) as excinfo,
    ):
        await http.register_request(studio.base_url, register_body())
    assert str(excinfo.value) == "register-request failed: 429 Too Many Requests — slow down"
    assert (excinfo.value.op, excinfo.value.status) == ("register-request", 429)
    [warn] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 'op="register-request"' in warn.getMessage()
    assert "status=429" in warn.getMessage()
    assert "slow down" in warn.getMessage()
    assert "elapsed_ms=" in warn.getMessage()
    assert f"endpoint=http://127.0.0.1:{studio.port}{REGISTER}" in warn.getMessage()


async def test_success_leaves_a_debug_breadcrumb(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", REGISTER, Reply(200, {"requestId": "rr-1", "status": "pending"}))
    with caplog.at_level(logging.DEBUG, logger="supervisor"), anyio.fail_after(DEADLINE_S):
        await http.register_request(studio.base_url, register_body())
    [ok] = [r for r in caplog.records if "studio request ok" in r.getMessage()]
    assert ok.levelno == logging.DEBUG
    for field in ('op="register-request"', "status=200", "elapsed_ms=", REGISTER):
        assert field in ok.getMessage()


async def test_failure_503_warns_with_status_and_body(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", REGISTER, Reply(503, "maintenance"))
    with (
        caplog.at_level(logging.WARNING),
        anyio.fail_after(DEADLINE_S),
        pytest.raises(StudioHttpError, match="503 Service Unavailable — maintenance"),
    ):
        await http.register_request(studio.base_url, register_body())
    assert "status=503" in caplog.text
    assert "maintenance" in caplog.text


async def test_register_request_without_request_id_is_a_response_error(
    studio: FakeStudio, http: StudioHttp
) -> None:
    studio.script("POST", REGISTER, Reply(200, {"status": "pending"}))
    with anyio.fail_after(DEADLINE_S), pytest.raises(StudioResponseError, match="requestId"):
        await http.register_request(studio.base_url, register_body())


async def test_transport_error(http: StudioHttp) -> None:
    with anyio.fail_after(DEADLINE_S), pytest.raises(StudioTransportError) as excinfo:
        await http.register_request(closed_port_url(), register_body())
    assert str(excinfo.value).startswith("register-request failed: transport error: ")


# --- register-poll -------------------------------------------------------------------------


async def test_poll_pending_then_approved_with_bearer_secret(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script(
        "GET",
        POLL,
        Reply(200, {"status": "pending"}),
        Reply(200, {"status": "approved", "workerId": "w-real-42", "authToken": TOKEN}),
    )
    with caplog.at_level(logging.DEBUG), anyio.fail_after(DEADLINE_S):
        first = await http.poll_registration(studio.base_url, "rr-abc-123", SECRET)
        second = await http.poll_registration(studio.base_url, "rr-abc-123", SECRET)
    assert first == RegistrationPending()
    assert second == RegistrationApproved(worker_id="w-real-42", auth_token=TOKEN)
    for sent in studio.received(POLL):
        assert sent.method == "GET"
        assert sent.headers["authorization"] == f"Bearer {SECRET}"
    secret_free(caplog)


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"status": "rejected", "reason": "unknown contributor"}, "unknown contributor"),
     ({"status": "rejected"}, "")],
)  # fmt: skip
async def test_poll_rejected_carries_reason(
    studio: FakeStudio, http: StudioHttp, body: dict[str, str], reason: str
) -> None:
    studio.script("GET", POLL, Reply(200, body))
    with anyio.fail_after(DEADLINE_S):
        status = await http.poll_registration(studio.base_url, "rr-abc-123", SECRET)
    assert status == RegistrationRejected(reason=reason)


async def test_poll_404_is_none_and_not_a_warning(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("GET", POLL, Reply(404, "gone"))
    with caplog.at_level(logging.WARNING), anyio.fail_after(DEADLINE_S):
        assert await http.poll_registration(studio.base_url, "rr-abc-123", SECRET) is None
    assert not caplog.records


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_poll_other_errors_raise(studio: FakeStudio, http: StudioHttp, status: int) -> None:
    studio.script("GET", POLL, Reply(status, "nope"))
    with anyio.fail_after(DEADLINE_S), pytest.raises(StudioHttpError) as excinfo:
        await http.poll_registration(studio.base_url, "rr-abc-123", SECRET)
    assert str(excinfo.value).startswith(f"register-poll failed: {status} ")


async def test_poll_unknown_status_is_a_response_error(
    studio: FakeStudio, http: StudioHttp
) -> None:
    studio.script("GET", POLL, Reply(200, {"status": "teleported"}))
    with anyio.fail_after(DEADLINE_S), pytest.raises(StudioResponseError, match="register-poll"):
        await http.poll_registration(studio.base_url, "rr-abc-123", SECRET)


# --- complete (multipart upload) -----------------------------------------------------------


async def upload(
    http: StudioHttp, base: str, *, ext: str = "png", data: bytes = b"\x89PNG\r\n"
) -> None:
    with anyio.fail_after(DEADLINE_S):
        await http.upload_result(base, "w-1", TOKEN, "job-9", PROMPT, ext, data)


PROMPT = "a lighthouse at dusk, " * 20 + "ünïcødé ✓"  # longer than the 200-char preview


async def test_upload_fields_in_order_with_filename_and_mime(
    studio: FakeStudio, http: StudioHttp
) -> None:
    studio.script("POST", COMPLETE, Reply(200, {"ok": True}))
    data = bytes(range(256)) + b"\r\n--not-a-boundary\r\n"
    await upload(http, studio.base_url, data=data)
    [sent] = studio.received(COMPLETE)
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["user-agent"] == USER_AGENT
    content_type = sent.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    parts = parse_multipart(content_type, sent.body)
    assert [p.name for p in parts] == ["prompt", "ext", "image"]
    prompt, ext, image = parts
    assert (prompt.data.decode(), prompt.filename, prompt.content_type) == (PROMPT, None, None)
    assert (ext.data, ext.filename, ext.content_type) == (b"png", None, None)
    assert (image.filename, image.content_type, image.data) == ("job-9.png", "image/png", data)
    assert "generationMeta" not in sent.body.decode("latin-1")


@pytest.mark.parametrize(
    ("ext", "mime"),
    [("mp3", "audio/mpeg"), ("mp4", "video/mp4"), ("bin", "application/octet-stream")],
)
async def test_upload_mime_for_other_extensions(
    studio: FakeStudio, http: StudioHttp, ext: str, mime: str
) -> None:
    studio.script("POST", COMPLETE, Reply(200, {"ok": True}))
    await upload(http, studio.base_url, ext=ext)
    [sent] = studio.received(COMPLETE)
    image = parse_multipart(sent.headers["content-type"], sent.body)[2]
    assert (image.filename, image.content_type) == (f"job-9.{ext}", mime)


def test_mime_table() -> None:
    assert {ext: mime_for_ext(ext) for ext in ("png", "webp", "gif", "wav", "mp3", "mp4")} == {
        "png": "image/png",
        "webp": "image/webp",
        "gif": "image/gif",
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "mp4": "video/mp4",
    }
    assert mime_for_ext("xyz") == "application/octet-stream"
    assert mime_for_ext("") == "application/octet-stream"


async def test_upload_409_is_final(studio: FakeStudio, http: StudioHttp) -> None:
    studio.script("POST", COMPLETE, Reply(409, {"error": "not your job"}))
    with pytest.raises(StudioHttpError) as excinfo:
        await upload(http, studio.base_url)
    assert "complete failed" in str(excinfo.value)
    assert str(excinfo.value) == (
        "complete failed: 409 Conflict — " + json.dumps({"error": "not your job"})
    )
    assert len(studio.received(COMPLETE)) == 1


async def test_upload_retries_5xx_twice_then_succeeds(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", COMPLETE, Reply(500, "boom"), Reply(502, "bad gw"), Reply(200, "{}"))
    with caplog.at_level(logging.INFO):
        await upload(http, studio.base_url)
    assert len(studio.received(COMPLETE)) == 3
    assert caplog.text.count("retrying upload") == 2


async def test_upload_gives_up_after_three_5xx(studio: FakeStudio, http: StudioHttp) -> None:
    studio.script("POST", COMPLETE, Reply(503, "down"))
    with pytest.raises(StudioHttpError, match=r"^complete failed: 503 Service Unavailable — down$"):
        await upload(http, studio.base_url)
    assert len(studio.received(COMPLETE)) == 3
    for sent in studio.received(COMPLETE):  # every attempt carries the whole form again
        assert [p.name for p in parse_multipart(sent.headers["content-type"], sent.body)] == [
            "prompt",
            "ext",
            "image",
        ]


async def test_upload_retries_transport_errors(
    http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO),
        pytest.raises(StudioTransportError, match=r"^complete failed: transport error"),
    ):
        await upload(http, closed_port_url())
    assert caplog.text.count("retrying upload") == 2


async def test_upload_logs_bytes_before_the_request_even_on_500(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", COMPLETE, Reply(500, "boom"))
    with caplog.at_level(logging.DEBUG, logger="supervisor"), pytest.raises(StudioHttpError):
        await upload(http, studio.base_url, ext="webp", data=b"12345")
    messages = [r.getMessage() for r in caplog.records]
    first_breadcrumb = next(i for i, m in enumerate(messages) if "bytes=5" in m)
    first_failure = next(i for i, m in enumerate(messages) if "studio request failed" in m)
    assert first_breadcrumb < first_failure
    breadcrumb = messages[first_breadcrumb]
    for field in ('op="complete"', 'job_id="job-9"', 'ext="webp"', 'mime="image/webp"'):
        assert field in breadcrumb
    assert caplog.records[first_breadcrumb].levelno == logging.DEBUG
    secret_free(caplog)


async def test_upload_4xx_warns_with_op_endpoint_status_elapsed_and_body(
    studio: FakeStudio, http: StudioHttp, caplog: pytest.LogCaptureFixture
) -> None:
    studio.script("POST", COMPLETE, Reply(404, "no such job"))
    with caplog.at_level(logging.WARNING), pytest.raises(StudioHttpError):
        await upload(http, studio.base_url)
    [warn] = caplog.records
    for field in ('op="complete"', COMPLETE, "status=404", "elapsed_ms=", "no such job"):
        assert field in warn.getMessage()
    secret_free(caplog)
