"""Supervisor <-> engine host messages: msgpack round-trips, tagged on ``t``, unknown fields
and unknown tags refused (both ends ship together), garbage raises ``IpcDecodeError``."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from protocol.ipc import (
    IPC_VERSION,
    CancelJob,
    ComputeDevice,
    HostHeartbeat,
    HostLog,
    HostMessage,
    IpcDecodeError,
    JobDone,
    JobFailed,
    LoadGrant,
    LoadRequest,
    Probe,
    ProbeResult,
    Progress,
    Ready,
    Resident,
    ResidentModel,
    RunJob,
    Shutdown,
    SupervisorMessage,
    Unload,
    decode_host,
    decode_supervisor,
    encode,
)
from protocol.tasks import (
    AudioTtsTask,
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelFile,
    ModelSource,
)

SOURCE = ModelSource(
    engine="sd-cpp",
    files=[ModelFile(role="model", url="https://x/m.gguf", filename="m.gguf", approx_bytes=10)],
    cli_defaults=ModelCliDefaults(cfg_scale=1.0, steps=8, width=1024, height=1024),
)

HOST_MESSAGES: list[HostMessage] = [
    Ready(
        version=IPC_VERSION,
        token="tok",
        engine="sdcpp",
        slot="sdcpp-gpu0-0",
        pid=4242,
        models_per_kind={"image": ["sd-cpp:*"]},
        library_versions={"stable_diffusion_cpp": "0.4.0"},
        compute=ComputeDevice("cuda", "NVIDIA H200", "GPU-5c3e1f2a-0000-0000-0000-000000000001"),
    ),
    HostHeartbeat(
        state="generating",
        job_id="job-1",
        rss_bytes=2**33,
        vram_bytes=None,
        jobs_done=3,
        model_loads=1,
        progress_seq=17,
    ),
    Progress(job_id="job-1", phase="downloading", step=5, total=100),
    Progress(job_id="job-1", phase="generating", step=8, total=8, message="step 8/8"),
    JobDone(job_id="job-1", elapsed_ms=1234, ext="webp", payload_bytes=2048),
    JobDone(job_id="job-2", elapsed_ms=5, json={"choices": [{"message": {"content": "hi"}}]}),
    JobFailed(
        job_id="job-1",
        error="sdcpp engine cannot serve llm tasks",
        retryable=False,
        reason="unsupported",
    ),
    HostLog(level="debug", message="loaded"),
    HostLog(level="warn", message="slow step", job_id="job-1"),
    LoadRequest(job_id="job-1", load_key="sdcpp:abc", estimate_bytes=2**32),
    Resident(models=[ResidentModel("sdcpp:abc", 2**32), ResidentModel("sdcpp:def", 0)]),
    ProbeResult(ok=False, detail="cudaMalloc failed: an illegal memory access"),
]

SUPERVISOR_MESSAGES: list[SupervisorMessage] = [
    RunJob(
        job_id="job-1",
        model="m",
        task=ImageTask(prompt="p", seed=1),
        model_source=SOURCE,
        deadline_s=1800.0,
    ),
    RunJob(
        job_id="job-2",
        model="synthetic-llm",
        task=LlmTask(messages=[ChatMessage(role="user", content="hi")], max_tokens=4),
        model_source=SOURCE,
        deadline_s=0.5,
    ),
    RunJob(
        job_id="job-3", model="t", task=AudioTtsTask(text="t"), model_source=SOURCE, deadline_s=10.0
    ),
    CancelJob(job_id="job-1"),
    Shutdown(grace_s=5.0),
    LoadGrant(job_id="job-1", granted=True),
    LoadGrant(job_id="job-2", granted=False, reason="14.0 GiB do not fit on GPU 0"),
    Unload(load_keys=["sdcpp:abc"]),
    Probe(bytes=2**26),
]


def raw(msg: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(encode(msg))
    return decoded


@pytest.mark.parametrize("msg", HOST_MESSAGES, ids=lambda m: type(m).__name__)
def test_host_messages_round_trip(msg: HostMessage) -> None:
    assert decode_host(encode(msg)) == msg


@pytest.mark.parametrize("msg", SUPERVISOR_MESSAGES, ids=lambda m: type(m).__name__)
def test_supervisor_messages_round_trip(msg: SupervisorMessage) -> None:
    assert decode_supervisor(encode(msg)) == msg


def test_tags() -> None:
    tags = [raw(m)["t"] for m in HOST_MESSAGES]
    assert tags == [
        "ready",
        "hb",
        "progress",
        "progress",
        "done",
        "done",
        "failed",
        "log",
        "log",
        "load_request",
        "resident",
        "probe_result",
    ]
    assert [raw(m)["t"] for m in SUPERVISOR_MESSAGES] == [
        "run",
        "run",
        "run",
        "cancel",
        "shutdown",
        "load_grant",
        "load_grant",
        "unload",
        "probe",
    ]


def test_ipc_version() -> None:
    assert IPC_VERSION == 2
    assert raw(HOST_MESSAGES[0])["version"] == 2


def test_nested_task_keeps_studio_wire_names() -> None:
    body = raw(SUPERVISOR_MESSAGES[1])
    assert body["task"]["kind"] == "llm"
    assert body["task"]["maxTokens"] == 4
    assert body["model_source"]["cliDefaults"]["cfgScale"] == 1.0


@pytest.mark.parametrize("msg", HOST_MESSAGES, ids=lambda m: type(m).__name__)
def test_host_messages_forbid_unknown_fields(msg: HostMessage) -> None:
    body = raw(msg)
    body["surprise"] = 1
    with pytest.raises(IpcDecodeError, match="surprise"):
        decode_host(msgspec.msgpack.encode(body))


@pytest.mark.parametrize("msg", SUPERVISOR_MESSAGES, ids=lambda m: type(m).__name__)
def test_supervisor_messages_forbid_unknown_fields(msg: SupervisorMessage) -> None:
    body = raw(msg)
    body["surprise"] = 1
    with pytest.raises(IpcDecodeError, match="surprise"):
        decode_supervisor(msgspec.msgpack.encode(body))


def test_messages_do_not_cross_directions() -> None:
    with pytest.raises(IpcDecodeError):
        decode_host(encode(Shutdown(grace_s=1.0)))
    with pytest.raises(IpcDecodeError):
        decode_supervisor(encode(HostLog(level="info", message="m")))


def test_unknown_tag_is_named() -> None:
    with pytest.raises(IpcDecodeError, match="teleport"):
        decode_host(msgspec.msgpack.encode({"t": "teleport"}))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"not msgpack at all", msgspec.msgpack.encode([1])])
def test_garbage_raises_ipc_decode_error(data: bytes) -> None:
    with pytest.raises(IpcDecodeError):
        decode_host(data)
    with pytest.raises(IpcDecodeError):
        decode_supervisor(data)


def test_missing_required_field_is_named() -> None:
    body = raw(HOST_MESSAGES[0])
    del body["token"]
    with pytest.raises(IpcDecodeError, match="token"):
        decode_host(msgspec.msgpack.encode(body))


def test_bad_literal_is_refused() -> None:
    body = raw(HOST_MESSAGES[1])
    body["state"] = "dreaming"
    with pytest.raises(IpcDecodeError):
        decode_host(msgspec.msgpack.encode(body))


def test_decoders_accept_memoryview() -> None:
    assert decode_host(memoryview(encode(HOST_MESSAGES[-1]))) == HOST_MESSAGES[-1]
    assert decode_supervisor(memoryview(encode(CancelJob(job_id="j")))) == CancelJob(job_id="j")


def test_ipc_decode_error_is_a_value_error() -> None:
    assert issubclass(IpcDecodeError, ValueError)
