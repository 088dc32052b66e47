"""Studio wire frames (protocol.md §2-§6, §11 ``tests/ws_wire.rs``): the examples decode and
re-encode to the same JSON, optional fields the worker sends are omitted (never null), the
studio's explicit nulls and unknown fields are tolerated, unknown types are named."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from protocol.studio import (
    ERROR_CODES,
    SUBPROTOCOL,
    Accept,
    Capabilities,
    CloseCode,
    CompleteAck,
    CompleteJson,
    Error,
    Fail,
    FailAck,
    FrameError,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LogBatch,
    LogEntry,
    Offer,
    ReadyForMore,
    RegisterRequest,
    RegisterRequestAccepted,
    RegistrationApproved,
    RegistrationPending,
    RegistrationRejected,
    RegistrationStatus,
    Reject,
    Welcome,
    close_code_for_error,
    decode_inbound,
    decode_outbound,
    encode_frame,
    encode_json,
    frame_label,
)
from protocol.tasks import ImageTask, LlmTask

# --- the examples of §2.3 / §2.4, verbatim (the heartbeat's "..." capabilities filled in) ---

CAPS_JSON = (
    '{"machineName":"rig-01","username":"webber","agentVersion":"0.2.0","engine":"multi",'
    '"vramTotalGb":24.0,"vramThresholdGb":12.0,"autoEnabled":true,"autoStart":false,'
    '"autoUpdate":true,"startMinimised":true,"onlyWhenIdle":false,'
    '"supportedModels":["synthetic","sdxl"],"taskKinds":[],"supportedModelsPerKind":{}}'
)

INBOUND_EXAMPLES = [
    '{"type":"hello","authToken":"t0k3n","capabilities":' + CAPS_JSON + "}",
    '{"type":"heartbeat","capabilities":' + CAPS_JSON + ',"currentJobId":"job-9"}',
    '{"type":"accept","jobId":"job-1"}',
    '{"type":"reject","jobId":"job-1","reason":"worker paused by operator","code":"paused"}',
    '{"type":"reject","jobId":"job-1","reason":"model unloaded"}',
    '{"type":"completeJson","jobId":"job-1","result":{"role":"assistant","content":"hi"},'
    '"prompt":"the final prompt"}',
    '{"type":"fail","jobId":"job-1","error":"oom","retryable":true}',
    '{"type":"logBatch","entries":[{"ts":"2026-05-25T12:00:00Z","level":"info",'
    '"category":"engine","message":"starting dispatch","jobId":"job-1"}]}',
    '{"type":"readyForMore"}',
]

OUTBOUND_EXAMPLES = [
    '{"type":"welcome","workerId":"w-1","serverTime":"2026-05-25T12:00:00Z"}',
    '{"type":"heartbeatAck"}',
    '{"type":"completeAck","jobId":"job-1"}',
    '{"type":"failAck","jobId":"job-1"}',
    '{"type":"error","code":"protocol_violation","message":"session not authenticated"}',
]

OFFER_EXAMPLE = """{"type":"offer","claim":{
  "jobId":"job-1","gameId":"game-of-elements","assetName":"game-of-elements/creatures/aurora-fox",
  "model":"synthetic-image","vramGbEstimate":4.0,
  "task":{"kind":"image","prompt":"an aurora fox at dusk","width":1024,"height":1024,"ext":"webp"},
  "modelSource":{"engine":"synthetic","files":[],"cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024}}}}"""


def caps(**changes: Any) -> Capabilities:
    base = msgspec.json.decode(CAPS_JSON, type=Capabilities)
    return msgspec.structs.replace(base, **changes)


def as_obj(text: str | bytes) -> Any:
    return json.loads(text)


# --- examples round-trip -------------------------------------------------------------------


@pytest.mark.parametrize("text", INBOUND_EXAMPLES, ids=lambda t: as_obj(t)["type"])
def test_inbound_example_reencodes_byte_identically(text: str) -> None:
    frame = decode_inbound(text)
    again = encode_frame(frame)
    assert as_obj(again) == as_obj(text)
    assert again == text
    assert decode_inbound(again) == frame


@pytest.mark.parametrize("text", OUTBOUND_EXAMPLES, ids=lambda t: as_obj(t)["type"])
def test_outbound_example_reencodes_byte_identically(text: str) -> None:
    frame = decode_outbound(text)
    again = encode_frame(frame)
    assert as_obj(again) == as_obj(text)
    assert again == text
    assert decode_outbound(again) == frame


def test_offer_example_decodes_and_reencodes_to_the_same_object() -> None:
    frame = decode_outbound(OFFER_EXAMPLE)
    assert isinstance(frame, Offer)
    claim = frame.claim
    assert (claim.job_id, claim.game_id, claim.model) == (
        "job-1",
        "game-of-elements",
        "synthetic-image",
    )
    assert claim.asset_name == "game-of-elements/creatures/aurora-fox"
    assert claim.vram_gb_estimate == 4.0
    assert claim.task == ImageTask(prompt="an aurora fox at dusk", width=1024, height=1024)
    assert claim.model_source.engine == "synthetic"
    assert claim.model_source.files == []
    assert claim.model_source.cli_defaults.steps == 8
    assert as_obj(encode_frame(frame)) == as_obj(OFFER_EXAMPLE)
    assert decode_outbound(encode_frame(frame)) == frame


# --- §2.2: optional fields omitted, nulls and unknown fields tolerated -------------------


def test_hello_fields_sit_beside_type() -> None:
    obj = as_obj(encode_frame(Hello(auth_token="t0k3n", capabilities=caps())))
    assert obj["type"] == "hello"
    assert obj["authToken"] == "t0k3n"
    assert obj["capabilities"]["machineName"] == "rig-01"


def test_heartbeat_without_current_job_omits_the_key() -> None:
    text = encode_frame(Heartbeat(capabilities=caps()))
    assert "currentJobId" not in as_obj(text)
    assert "null" not in text


def test_heartbeat_with_current_job_round_trips() -> None:
    frame = Heartbeat(capabilities=caps(), current_job_id="job-9")
    assert as_obj(encode_frame(frame))["currentJobId"] == "job-9"
    assert decode_inbound(encode_frame(frame)) == frame


def test_heartbeat_explicit_null_current_job_parses_as_absent() -> None:
    text = '{"type":"heartbeat","capabilities":' + CAPS_JSON + ',"currentJobId":null}'
    frame = decode_inbound(text)
    assert isinstance(frame, Heartbeat)
    assert frame.current_job_id is None
    assert "currentJobId" not in as_obj(encode_frame(frame))


def test_complete_json_without_prompt_omits_the_key_and_result_may_be_an_array() -> None:
    frame = CompleteJson(job_id="job-1", result=[1, {"a": None}, "x"])
    obj = as_obj(encode_frame(frame))
    assert "prompt" not in obj
    assert obj["result"] == [1, {"a": None}, "x"]
    assert decode_inbound(encode_frame(frame)) == frame


def test_complete_json_with_prompt_round_trips() -> None:
    frame = CompleteJson(job_id="job-1", result={"text": "hallo"}, prompt="the final prompt")
    assert as_obj(encode_frame(frame))["prompt"] == "the final prompt"
    assert decode_inbound(encode_frame(frame)) == frame


def test_reject_without_code_omits_the_key() -> None:
    assert as_obj(encode_frame(Reject(job_id="job-1", reason="model unloaded"))) == {
        "type": "reject",
        "jobId": "job-1",
        "reason": "model unloaded",
    }


@pytest.mark.parametrize("code", ["busy", "paused"])
def test_reject_code_parses_to_the_literal_and_reserialises_identically(code: str) -> None:
    text = f'{{"type":"reject","jobId":"job-1","reason":"r","code":"{code}"}}'
    frame = decode_inbound(text)
    assert frame == Reject(job_id="job-1", reason="r", code=code)  # type: ignore[arg-type]
    assert encode_frame(frame) == text


def test_reject_unknown_code_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_inbound('{"type":"reject","jobId":"j","reason":"r","code":"sleepy"}')


def test_accept_round_trips_byte_identically() -> None:
    text = '{"type":"accept","jobId":"job-1"}'
    assert encode_frame(decode_inbound(text)) == text
    assert encode_frame(Accept(job_id="job-1")) == text


def test_fail_round_trips() -> None:
    frame = Fail(job_id="job-1", error="oom", retryable=False)
    obj = as_obj(encode_frame(frame))
    assert (obj["error"], obj["retryable"]) == ("oom", False)
    assert decode_inbound(encode_frame(frame)) == frame


def test_log_entry_without_job_id_omits_the_key() -> None:
    entry = LogEntry(ts="2026-05-16T00:00:00.000Z", level="warn", category="ws", message="m")
    obj = as_obj(encode_frame(LogBatch(entries=[entry])))
    assert obj == {
        "type": "logBatch",
        "entries": [
            {"ts": "2026-05-16T00:00:00.000Z", "level": "warn", "category": "ws", "message": "m"}
        ],
    }


def test_empty_log_batch_round_trips() -> None:
    text = '{"type":"logBatch","entries":[]}'
    assert decode_inbound(text) == LogBatch(entries=[])
    assert encode_frame(LogBatch(entries=[])) == text


def test_ready_for_more_round_trips() -> None:
    assert encode_frame(ReadyForMore()) == '{"type":"readyForMore"}'
    assert decode_inbound('{"type":"readyForMore"}') == ReadyForMore()


def test_capabilities_always_serialise_the_newest_flags() -> None:
    obj = as_obj(encode_json(caps(only_when_idle=False, auto_update=False, start_minimised=False)))
    assert obj["agentVersion"] == "0.2.0"
    assert obj["autoStart"] is False
    assert obj["autoUpdate"] is False
    assert obj["startMinimised"] is False
    assert obj["onlyWhenIdle"] is False
    assert obj["taskKinds"] == []
    assert obj["supportedModelsPerKind"] == {}


def test_capabilities_user_presence_present_when_known() -> None:
    obj = as_obj(encode_frame(Heartbeat(capabilities=caps(user_presence="idle"))))
    assert obj["capabilities"]["userPresence"] == "idle"


def test_capabilities_unknown_presence_omitted_only_when_idle_still_present() -> None:
    full = as_obj(encode_json(caps()))
    assert full["onlyWhenIdle"] is False
    assert "userPresence" not in full
    assert "maxConcurrentJobs" not in full
    assert "null" not in encode_json(caps()).decode()


def test_capabilities_explicit_null_presence_parses_as_absent() -> None:
    text = CAPS_JSON[:-1] + ',"userPresence":null,"maxConcurrentJobs":null}'
    parsed = msgspec.json.decode(text, type=Capabilities)
    assert parsed.user_presence is msgspec.UNSET
    assert parsed.max_concurrent_jobs is msgspec.UNSET
    assert parsed == caps()
    assert "null" not in encode_json(parsed).decode()


def test_capabilities_max_concurrent_jobs_serialised_when_set() -> None:
    assert as_obj(encode_json(caps(max_concurrent_jobs=3)))["maxConcurrentJobs"] == 3


def test_capabilities_from_an_old_peer_default_the_newest_fields() -> None:
    old = (
        '{"machineName":"m","username":"u","agentVersion":"0.2.0","engine":"synthetic",'
        '"vramTotalGb":0.0,"vramThresholdGb":8.0,"autoEnabled":true,"autoStart":true}'
    )
    parsed = msgspec.json.decode(old, type=Capabilities)
    assert parsed.auto_update is True
    assert parsed.start_minimised is True
    assert parsed.only_when_idle is False
    assert parsed.user_presence is msgspec.UNSET
    assert (parsed.supported_models, parsed.task_kinds, parsed.supported_models_per_kind) == (
        [],
        [],
        {},
    )


def test_unknown_fields_from_the_studio_are_ignored() -> None:
    frame = decode_outbound(
        '{"type":"welcome","workerId":"w-1","serverTime":"now","region":"eu","v":[1,2]}'
    )
    assert frame == Welcome(worker_id="w-1", server_time="now")
    offer = as_obj(OFFER_EXAMPLE)
    offer["claim"]["prompt"] = "legacy field"
    offer["claim"]["ext"] = "png"
    offer["claim"]["task"]["futureKnob"] = 3
    offer["claim"]["modelSource"]["mirror"] = "r2"
    offer["claim"]["modelSource"]["cliDefaults"]["newFlag"] = True
    offer["extra"] = {"nested": None}
    assert decode_outbound(json.dumps(offer)) == decode_outbound(OFFER_EXAMPLE)


def test_explicit_nulls_in_an_offer_parse_as_absent() -> None:
    offer = as_obj(OFFER_EXAMPLE)
    offer["claim"]["task"].update(negativePrompt=None, seed=None, initImageUrl=None, denoise=None)
    offer["claim"]["modelSource"]["cliDefaults"].update(samplingMethod=None, flowShift=None)
    assert decode_outbound(json.dumps(offer)) == decode_outbound(OFFER_EXAMPLE)


# --- unknown types and missing fields --------------------------------------------------------


def test_unknown_inbound_type_names_it() -> None:
    with pytest.raises(FrameError, match="totallyMadeUp"):
        decode_inbound('{"type":"totallyMadeUp","jobId":"x"}')


def test_unknown_outbound_type_names_it() -> None:
    with pytest.raises(FrameError, match="wat"):
        decode_outbound('{"type":"wat"}')


@pytest.mark.parametrize("text", ["not json", "[]", '{"jobId":"x"}', ""])
def test_garbage_is_a_frame_error(text: str) -> None:
    with pytest.raises(FrameError):
        decode_outbound(text)
    with pytest.raises(FrameError):
        decode_inbound(text)


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize("field", ["task", "modelSource"])
def test_offer_without_task_or_model_source_fails_naming_the_field(field: str) -> None:
    offer = as_obj(OFFER_EXAMPLE)
    del offer["claim"][field]
    with pytest.raises(FrameError, match=f"`{field}`"):
        decode_outbound(json.dumps(offer))


@pytest.mark.parametrize("field", ["jobId", "gameId", "assetName", "model", "vramGbEstimate"])
def test_offer_claim_required_fields(field: str) -> None:
    offer = as_obj(OFFER_EXAMPLE)
    del offer["claim"][field]
    with pytest.raises(FrameError, match=f"`{field}`"):
        decode_outbound(json.dumps(offer))


def test_offer_with_an_llm_task_parses_camel_case_params() -> None:
    offer = as_obj(OFFER_EXAMPLE)
    offer["claim"]["task"] = {
        "kind": "llm",
        "messages": [{"role": "user", "content": "hi"}],
        "maxTokens": 4,
    }
    frame = decode_outbound(json.dumps(offer))
    assert isinstance(frame, Offer)
    assert frame.claim.task == LlmTask(messages=frame.claim.task.messages, max_tokens=4)  # type: ignore[union-attr]
    assert isinstance(frame.claim.task, LlmTask)
    assert frame.claim.task.messages[0].content == "hi"


def test_offer_with_an_unknown_task_kind_fails_naming_it() -> None:
    offer = as_obj(OFFER_EXAMPLE)
    offer["claim"]["task"] = {"kind": "hologram", "prompt": "x"}
    with pytest.raises(FrameError, match="hologram"):
        decode_outbound(json.dumps(offer))


def test_binary_text_frames_decode_too() -> None:
    assert decode_outbound(b'{"type":"heartbeatAck"}') == HeartbeatAck()


# --- acks, errors, close codes ---------------------------------------------------------------


def test_acks_round_trip() -> None:
    for frame in (HeartbeatAck(), CompleteAck(job_id="job-1"), FailAck(job_id="job-1")):
        assert decode_outbound(encode_frame(frame)) == frame
    assert as_obj(encode_frame(CompleteAck(job_id="job-1"))) == {
        "type": "completeAck",
        "jobId": "job-1",
    }


def test_welcome_round_trips() -> None:
    text = '{"type":"welcome","workerId":"worker-7","serverTime":"now"}'
    frame = decode_outbound(text)
    assert frame == Welcome(worker_id="worker-7", server_time="now")
    assert encode_frame(frame) == text


def test_error_code_wire_values() -> None:
    assert ERROR_CODES == (
        "auth_failed",
        "protocol_violation",
        "duplicate_worker",
        "worker_deleted",
        "internal_error",
    )


@pytest.mark.parametrize("code", ERROR_CODES)
def test_error_frame_round_trips_for_every_code(code: str) -> None:
    text = f'{{"type":"error","code":"{code}","message":"m"}}'
    frame = decode_outbound(text)
    assert frame == Error(code=code, message="m")
    assert encode_frame(frame) == text


def test_close_code_values() -> None:
    assert [int(c) for c in CloseCode] == [1000, 4001, 4002, 4003, 4004]
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "AUTH_FAILED": 4001,
        "PROTOCOL_VIOLATION": 4002,
        "DUPLICATE_WORKER": 4003,
        "WORKER_DELETED": 4004,
    }


@pytest.mark.parametrize(
    ("code", "close"),
    [
        ("auth_failed", 4001),
        ("protocol_violation", 4002),
        ("duplicate_worker", 4003),
        ("worker_deleted", 4004),
        ("internal_error", 1000),
        ("something_new", 1000),
    ],
)
def test_error_to_close_code_mapping(code: str, close: int) -> None:
    assert close_code_for_error(code) == close


def test_subprotocol() -> None:
    assert SUBPROTOCOL == "studio-worker-v1"


@pytest.mark.parametrize(
    ("frame", "label"),
    [
        (Hello(auth_token="t", capabilities=caps()), "hello"),
        (Heartbeat(capabilities=caps()), "heartbeat"),
        (Accept(job_id="j"), "accept"),
        (Reject(job_id="j", reason="r"), "reject"),
        (CompleteJson(job_id="j", result={}), "completeJson"),
        (Fail(job_id="j", error="e", retryable=True), "fail"),
        (LogBatch(entries=[]), "logBatch"),
        (ReadyForMore(), "readyForMore"),
        (Welcome(worker_id="w", server_time="now"), "welcome"),
        (HeartbeatAck(), "heartbeatAck"),
        (CompleteAck(job_id="j"), "completeAck"),
        (FailAck(job_id="j"), "failAck"),
        (Error(code="internal_error", message="m"), "error"),
    ],
)
def test_every_frame_has_a_label_equal_to_its_wire_type(frame: Any, label: str) -> None:
    assert frame_label(frame) == label
    assert as_obj(encode_frame(frame))["type"] == label


# --- §6.2 registration bodies -----------------------------------------------------------------


def test_register_request_example_round_trips() -> None:
    text = (
        '{"installId":"11111111-2222-3333-4444-555555555555",'
        '"registrationSecretHash":"' + "ab" * 32 + '",'
        '"capabilities":' + CAPS_JSON + ","
        '"userAgent":"studio-worker/0.4.15"}'
    )
    parsed = msgspec.json.decode(text, type=RegisterRequest)
    assert parsed.capabilities == caps()
    assert encode_json(parsed).decode() == text


def test_register_request_accepted_needs_both_fields() -> None:
    text = '{"requestId":"rr-abc-123","status":"pending"}'
    parsed = msgspec.json.decode(text, type=RegisterRequestAccepted)
    assert parsed == RegisterRequestAccepted(request_id="rr-abc-123", status="pending")
    assert encode_json(parsed).decode() == text
    with pytest.raises(msgspec.ValidationError, match="status"):
        msgspec.json.decode('{"requestId":"rr"}', type=RegisterRequestAccepted)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"status":"pending"}', RegistrationPending()),
        (
            '{"status":"approved","workerId":"w-real-42","authToken":"tok-issued-by-studio"}',
            RegistrationApproved(worker_id="w-real-42", auth_token="tok-issued-by-studio"),
        ),
        (
            '{"status":"rejected","reason":"unknown contributor"}',
            RegistrationRejected("unknown contributor"),
        ),
    ],
)
def test_poll_status_examples_round_trip(text: str, expected: RegistrationStatus) -> None:
    parsed: RegistrationStatus = msgspec.json.decode(text, type=RegistrationStatus)
    assert parsed == expected
    assert as_obj(encode_json(parsed)) == as_obj(text)


def test_rejected_reason_defaults_to_empty() -> None:
    parsed = msgspec.json.decode('{"status":"rejected"}', type=RegistrationStatus)
    assert parsed == RegistrationRejected(reason="")
