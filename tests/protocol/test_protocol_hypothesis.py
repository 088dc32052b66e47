"""Property tests: every studio frame type and every IPC message round-trips through its
codec, what the worker sends never carries ``null`` for its own optional fields, and the
studio's unknown fields and explicit nulls never change what a frame decodes to."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ipc
from protocol.studio import (
    Accept,
    Capabilities,
    CompleteAck,
    CompleteJson,
    Error,
    Fail,
    FailAck,
    FrameError,
    Heartbeat,
    HeartbeatAck,
    Hello,
    JobOfferClaim,
    LogBatch,
    LogEntry,
    Offer,
    ReadyForMore,
    Reject,
    Welcome,
    WorkerInbound,
    WorkerOutbound,
    decode_inbound,
    decode_outbound,
    encode_frame,
)
from protocol.tasks import (
    TASK_KINDS,
    AudioSttTask,
    AudioTtsTask,
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelFile,
    ModelSource,
    Task,
    VideoTask,
)

# Per-test settings (not a global profile, which would leak into other modules).
PROPERTY = settings(database=None, deadline=None, max_examples=150)

text = st.text(max_size=24)
opt_text = st.none() | text
i64 = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 2**32 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
opt_float = st.none() | floats
opt_bool = st.none() | st.booleans()
json_values = st.recursive(
    st.none() | st.booleans() | i64 | floats | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)
json_objects = st.dictionaries(text, json_values, max_size=3)

# --- tasks and model sources --------------------------------------------------------------

image_tasks = st.builds(
    ImageTask,
    prompt=text,
    negative_prompt=opt_text,
    init_image_url=opt_text,
    mask_url=opt_text,
    ref_image_url=opt_text,
    denoise=opt_float,
    cfg_scale=opt_float,
    sampling_method=opt_text,
    width=u32,
    height=u32,
    steps=u32,
    seed=st.none() | st.integers(0, 2**64 - 1),
    ext=text,
)
llm_tasks = st.builds(
    LlmTask,
    messages=st.lists(st.builds(ChatMessage, role=text, content=text), max_size=4),
    system=opt_text,
    max_tokens=u32,
    temperature=floats,
    top_p=opt_float,
    stop=st.none() | st.lists(text, max_size=3),
    json_schema=json_values,
    reasoning=opt_text,
    chat_template_kwargs=st.none() | json_objects,
    seed=st.none() | i64,
)
stt_tasks = st.builds(
    AudioSttTask,
    input_url=text,
    language=opt_text,
    translate=opt_bool,
    prompt=opt_text,
    vad=opt_bool,
    timestamps=st.sampled_from([None, "segment", "word"]),
)
tts_tasks = st.builds(
    AudioTtsTask, text=text, voice=text, speed=opt_float, language=opt_text, ext=text
)
video_tasks = st.builds(
    VideoTask,
    prompt=text,
    negative_prompt=opt_text,
    init_image_url=opt_text,
    seconds=floats,
    fps=st.none() | u32,
    width=u32,
    height=u32,
    ext=text,
)
tasks: st.SearchStrategy[Task] = st.one_of(
    image_tasks, llm_tasks, stt_tasks, tts_tasks, video_tasks
)

model_sources = st.builds(
    ModelSource,
    engine=st.sampled_from(["sd-cpp", "llama-cpp", "onnx", "parakeet", "synthetic"]) | text,
    files=st.lists(
        st.builds(
            ModelFile,
            role=text,
            url=text,
            filename=text,
            approx_bytes=st.none() | st.integers(0, 2**63 - 1),
            sha256=opt_text,
        ),
        max_size=3,
    ),
    cli_defaults=st.builds(
        ModelCliDefaults,
        cfg_scale=floats,
        steps=u32,
        width=u32,
        height=u32,
        sampling_method=opt_text,
        flow_shift=opt_float,
        zero_cond_t=opt_bool,
        offload_to_cpu=opt_bool,
        context_size=st.none() | u32,
        chat_template_kwargs=st.none() | json_objects,
    ),
)

# --- studio frames ------------------------------------------------------------------------

kinds = st.lists(st.sampled_from(TASK_KINDS), max_size=5, unique=True)
capabilities = st.builds(
    Capabilities,
    machine_name=text,
    username=text,
    agent_version=text,
    engine=text,
    vram_total_gb=floats,
    vram_threshold_gb=floats,
    auto_enabled=st.booleans(),
    auto_start=st.booleans(),
    auto_update=st.booleans(),
    start_minimised=st.booleans(),
    only_when_idle=st.booleans(),
    user_presence=st.sampled_from([msgspec.UNSET, None, "idle", "active"]),
    supported_models=st.lists(text, max_size=4),
    task_kinds=kinds,
    supported_models_per_kind=st.dictionaries(text, st.lists(text, max_size=3), max_size=3),
    max_concurrent_jobs=st.sampled_from([msgspec.UNSET, None]) | st.integers(0, 64),
)
log_entries = st.builds(
    LogEntry,
    ts=text,
    level=st.sampled_from(["info", "warn", "error"]),
    category=text,
    message=text,
    job_id=opt_text,
)
inbound_frames: st.SearchStrategy[WorkerInbound] = st.one_of(
    st.builds(Hello, auth_token=text, capabilities=capabilities),
    st.builds(Heartbeat, capabilities=capabilities, current_job_id=opt_text),
    st.builds(Accept, job_id=text),
    st.builds(Reject, job_id=text, reason=text, code=st.sampled_from([None, "busy", "paused"])),
    st.builds(CompleteJson, job_id=text, result=json_values, prompt=opt_text),
    st.builds(Fail, job_id=text, error=text, retryable=st.booleans()),
    st.builds(LogBatch, entries=st.lists(log_entries, max_size=4)),
    st.just(ReadyForMore()),
)
claims = st.builds(
    JobOfferClaim,
    job_id=text,
    game_id=text,
    asset_name=text,
    model=text,
    vram_gb_estimate=floats,
    task=tasks,
    model_source=model_sources,
)
outbound_frames: st.SearchStrategy[WorkerOutbound] = st.one_of(
    st.builds(Welcome, worker_id=text, server_time=text),
    st.builds(Offer, claim=claims),
    st.just(HeartbeatAck()),
    st.builds(CompleteAck, job_id=text),
    st.builds(FailAck, job_id=text),
    st.builds(Error, code=text, message=text),
)


def own_nulls(value: Any, path: str = "$") -> list[str]:
    """Paths of ``null`` in a frame, skipping the free-form JSON a job result carries."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [
            p
            for key, item in value.items()
            if key != "result"
            for p in own_nulls(item, f"{path}.{key}")
        ]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in own_nulls(item, f"{path}[{i}]")]
    return []


@PROPERTY
@given(inbound_frames)
def test_inbound_frames_round_trip(frame: WorkerInbound) -> None:
    wire = encode_frame(frame)
    again = decode_inbound(wire)
    assert again == frame
    assert encode_frame(again) == wire


@PROPERTY
@given(inbound_frames)
def test_inbound_frames_never_send_null_for_their_own_fields(frame: WorkerInbound) -> None:
    assert own_nulls(json.loads(encode_frame(frame))) == []


@PROPERTY
@given(outbound_frames)
def test_outbound_frames_round_trip(frame: WorkerOutbound) -> None:
    wire = encode_frame(frame)
    again = decode_outbound(wire)
    assert again == frame
    assert encode_frame(again) == wire


@PROPERTY
@given(outbound_frames, st.dictionaries(st.text(min_size=1).map(lambda k: "x-" + k), json_values))
def test_unknown_studio_fields_do_not_change_the_frame(
    frame: WorkerOutbound, extra: dict[str, Any]
) -> None:
    obj = json.loads(encode_frame(frame))
    obj.update(extra)
    if isinstance(frame, Offer):
        obj["claim"].update(extra)
        obj["claim"]["task"].update(extra)
        obj["claim"]["modelSource"]["cliDefaults"].update(extra)
    assert decode_outbound(json.dumps(obj)) == frame


@PROPERTY
@given(claims)
def test_explicit_nulls_for_absent_task_fields_parse_as_absent(claim: JobOfferClaim) -> None:
    obj = json.loads(encode_frame(Offer(claim=claim)))
    task_obj = obj["claim"]["task"]
    optional = {f.encode_name for f in msgspec.structs.fields(claim.task) if f.default is None}
    assert optional  # every kind has optional fields
    for name in optional - task_obj.keys():
        task_obj[name] = None
    assert decode_outbound(json.dumps(obj)) == Offer(claim=claim)


@PROPERTY
@given(tasks)
def test_tasks_round_trip_through_msgpack_too(task: Task) -> None:
    wire = msgspec.msgpack.encode(task)
    assert msgspec.msgpack.decode(wire, type=Task) == task


# --- IPC -------------------------------------------------------------------------------------

host_messages: st.SearchStrategy[ipc.HostMessage] = st.one_of(
    st.builds(
        ipc.Ready,
        version=st.integers(0, 10),
        token=text,
        engine=text,
        slot=text,
        pid=st.integers(1, 2**31),
        models_per_kind=st.dictionaries(text, st.lists(text, max_size=3), max_size=3),
        library_versions=st.dictionaries(text, text, max_size=3),
        compute=st.builds(
            ipc.ComputeDevice,
            backend=st.sampled_from(["cuda", "rocm", "vulkan", "metal", "cpu", "simulated"]),
            name=text,
            uuid=text,
        ),
    ),
    st.builds(
        ipc.HostHeartbeat,
        state=st.sampled_from(["idle", "downloading", "loading", "generating"]),
        job_id=opt_text,
        rss_bytes=st.integers(0, 2**63 - 1),
        vram_bytes=st.none() | st.integers(0, 2**63 - 1),
        jobs_done=u32,
        model_loads=u32,
        progress_seq=u32,
    ),
    st.builds(
        ipc.Progress,
        job_id=text,
        phase=st.sampled_from(["downloading", "loading", "generating"]),
        step=i64,
        total=i64,
        message=text,
    ),
    st.builds(
        ipc.JobDone,
        job_id=text,
        elapsed_ms=st.integers(0, 2**40),
        json=json_values,
        ext=opt_text,
        payload_bytes=st.integers(0, 2**40),
    ),
    st.builds(ipc.JobFailed, job_id=text, error=text, retryable=st.booleans(), reason=text),
    st.builds(
        ipc.HostLog,
        level=st.sampled_from(["debug", "info", "warn", "error"]),
        message=text,
        job_id=opt_text,
    ),
    st.builds(ipc.LoadRequest, job_id=text, load_key=text, estimate_bytes=st.integers(0, 2**50)),
    st.builds(
        ipc.Resident,
        models=st.lists(
            st.builds(ipc.ResidentModel, load_key=text, size_bytes=st.integers(0, 2**50)),
            max_size=4,
        ),
    ),
    st.builds(ipc.ProbeResult, ok=st.booleans(), detail=text),
)
supervisor_messages: st.SearchStrategy[ipc.SupervisorMessage] = st.one_of(
    st.builds(
        ipc.RunJob,
        job_id=text,
        model=text,
        task=tasks,
        model_source=model_sources,
        deadline_s=floats,
    ),
    st.builds(ipc.CancelJob, job_id=text),
    st.builds(ipc.Shutdown, grace_s=floats),
    st.builds(ipc.LoadGrant, job_id=text, granted=st.booleans(), reason=text),
    st.builds(ipc.Unload, load_keys=st.lists(text, max_size=4)),
    st.builds(ipc.Probe, bytes=st.integers(0, 2**40)),
)


@PROPERTY
@given(host_messages)
def test_host_messages_round_trip(msg: ipc.HostMessage) -> None:
    wire = ipc.encode(msg)
    assert ipc.decode_host(wire) == msg
    assert ipc.encode(ipc.decode_host(wire)) == wire


@PROPERTY
@given(supervisor_messages)
def test_supervisor_messages_round_trip(msg: ipc.SupervisorMessage) -> None:
    wire = ipc.encode(msg)
    assert ipc.decode_supervisor(wire) == msg
    assert ipc.encode(ipc.decode_supervisor(wire)) == wire


@PROPERTY
@given(st.binary(max_size=64))
def test_ipc_garbage_never_escapes_as_anything_but_ipc_decode_error(data: bytes) -> None:
    for decode in (ipc.decode_host, ipc.decode_supervisor):
        with contextlib.suppress(ipc.IpcDecodeError):
            decode(data)


@PROPERTY
@given(st.text(max_size=64) | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_studio_garbage_never_escapes_as_anything_but_frame_error(data: str) -> None:
    for decode in (decode_inbound, decode_outbound):
        with contextlib.suppress(FrameError):
            decode(data)
