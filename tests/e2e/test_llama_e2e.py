"""LLM jobs end to end: the real supervisor (a real llama engine host subprocess running
llama-cpp-python, real ZeroMQ) against the scripted studio peer, the tiny generated GGUF
fetched over real HTTP on 127.0.0.1 exactly as a studio ``modelSource`` file is.

Each test reads what the studio would see (``accept``, ``completeJson``, ``fail`` frames on
one WebSocket) and what the host reports (its heartbeat's ``model_loads``, the slot's
restart counter), never the engine object itself: it lives in another process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import jsonschema  # type: ignore[import-untyped]

# The real library must be installed (scripts/install): a missing one fails, never skips.
import llama_cpp  # noqa: F401
import pytest

from protocol import studio
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelFile, ModelSource
from supervisor.pool.slot import Slot
from tests.support.models.fixtures import ModelServer, model_server
from tests.support.models.tiny_llama import cached_tiny_llama
from tests.support.studio_peer import PeerConnection, StudioPeer, make_offer, running_peer
from tests.support.supervisor_harness import (
    RunningSupervisor,
    engine_slot,
    model_loads,
    running_supervisor,
)

__all__ = ["model_server"]  # a fixture, imported for pytest

pytestmark = pytest.mark.anyio

MODEL = "tiny/chat:q0"
JOB_TIMEOUT_S = 30.0
BOOL_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
ENUM_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}


def source(file: ModelFile, context_size: int | None = None) -> ModelSource:
    return ModelSource(
        "llama-cpp", [file], ModelCliDefaults(1.0, 8, 512, 512, context_size=context_size)
    )


def chat(text: str = "hello", **params: Any) -> LlmTask:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 8)
    return LlmTask(messages=[ChatMessage("user", text)], **params)


def offer(job_id: str, task: LlmTask, src: ModelSource, model: str = MODEL) -> studio.Offer:
    return make_offer(job_id, task, src, model, asset_name="game-1/dialogue/fox")


def llama_slot(run: RunningSupervisor) -> Slot:
    return engine_slot(run, "llama")


async def welcomed(peer: StudioPeer) -> PeerConnection:
    conn = await peer.next_connection(timeout_s=JOB_TIMEOUT_S)
    hello = await conn.handshake()
    assert "llama-cpp:*" in hello.capabilities.supported_models_per_kind["llm"]
    return conn


async def run_json(conn: PeerConnection, frame: studio.Offer) -> studio.CompleteJson:
    job_id = frame.claim.job_id
    await conn.send(frame)
    assert (await conn.expect(studio.Accept)).job_id == job_id
    done = await conn.expect(studio.CompleteJson, timeout_s=JOB_TIMEOUT_S)
    assert done.job_id == job_id
    await conn.send(studio.CompleteAck(job_id=job_id))
    return done


async def run_fail(conn: PeerConnection, frame: studio.Offer) -> studio.Fail:
    job_id = frame.claim.job_id
    await conn.send(frame)
    assert (await conn.expect(studio.Accept)).job_id == job_id
    fail = await conn.expect(studio.Fail, timeout_s=JOB_TIMEOUT_S)
    assert fail.job_id == job_id
    return fail


async def end_session(run: RunningSupervisor, conn: PeerConnection) -> None:
    """Stop the worker the way an operator does and read until it closes the socket, so
    the close handshake is answered (a peer that stops reading leaves it to time out)."""
    run.sup.stop.set()
    assert await conn.wait_closed(timeout_s=JOB_TIMEOUT_S) == 1000
    assert await run.wait_exit() == 0


def content(done: studio.CompleteJson) -> str:
    text: str = done.result["choices"][0]["message"]["content"]
    return text


async def test_chat_completion_with_real_token_counts_and_no_reload(
    tmp_path: Path, model_server: ModelServer
) -> None:
    src = source(model_server.publish(cached_tiny_llama(), name="tiny-chat.gguf"))
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, engines="llama") as run,
    ):
        conn = await welcomed(peer)
        slot = llama_slot(run)
        pid = slot.pid
        done = await run_json(conn, offer("job-1", chat("hello there", max_tokens=6), src))
        result = done.result
        assert done.prompt == "hello there"
        assert result["object"] == "chat.completion"
        assert result["model"] == MODEL
        (choice,) = result["choices"]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
        usage = result["usage"]
        # "<s><|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n": a real count.
        assert usage["prompt_tokens"] > 5
        assert 1 <= usage["completion_tokens"] <= 6
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert model_loads(slot) == 1
        assert (tmp_path / "models" / "llm" / "tiny-chat.gguf").is_file()

        again = await run_json(conn, offer("job-2", chat("hello there", max_tokens=6), src))
        # The host kept the model: no second load, no second download, same greedy answer.
        assert model_loads(slot) == 1
        assert model_server.requests == ["/tiny-chat.gguf"]
        assert again.result["usage"] == result["usage"]
        assert content(again) == content(done)
        assert slot.pid == pid and slot.restarts == 0
        assert run.sup.lanes[0].state.job_outcomes["done"] == 2
        await end_session(run, conn)


@pytest.mark.parametrize("schema", [BOOL_SCHEMA, ENUM_SCHEMA], ids=["boolean", "enum"])
async def test_json_schema_answers_validate(
    tmp_path: Path, model_server: ModelServer, schema: dict[str, Any]
) -> None:
    src = source(model_server.publish(cached_tiny_llama(), name="tiny-chat.gguf"))
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, engines="llama") as run,
    ):
        conn = await welcomed(peer)
        for i, (temperature, seed) in enumerate([(0.0, None), (1.0, 7)]):
            task = chat("answer in JSON", max_tokens=200, temperature=temperature, seed=seed)
            task.json_schema = schema
            done = await run_json(conn, offer(f"job-json-{i}", task, src))
            assert done.result["choices"][0]["finish_reason"] == "stop"
            jsonschema.validate(json.loads(content(done)), schema)
        await end_session(run, conn)


async def test_an_oversized_prompt_fails_with_the_overflow_error(
    tmp_path: Path, model_server: ModelServer
) -> None:
    src = source(model_server.publish(cached_tiny_llama(), name="tiny-chat.gguf"), context_size=64)
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, engines="llama") as run,
    ):
        conn = await welcomed(peer)
        fail = await run_fail(conn, offer("job-long", chat("hello " * 80), src))
        assert fail.error.startswith("prompt is ")
        assert fail.error.endswith(
            " tokens but the context holds 64; raise contextSize or shorten the prompt"
        )
        # protocol.md §2.8: a context overflow is retryable (another worker may have more).
        assert fail.retryable is True
        # The model stayed loaded and the host alive: a prompt that fits just runs.
        done = await run_json(conn, offer("job-short", chat("hi"), src))
        assert done.result["object"] == "chat.completion"
        slot = llama_slot(run)
        assert model_loads(slot) == 1 and slot.restarts == 0
        await end_session(run, conn)


async def test_a_corrupt_gguf_fails_the_job_and_the_worker_carries_on(
    tmp_path: Path, model_server: ModelServer
) -> None:
    good = cached_tiny_llama().read_bytes()
    bad_path = tmp_path / "bad.gguf"
    bad_path.write_bytes(good[: len(good) // 2])  # truncated: llama.cpp refuses the tensors
    bad = source(model_server.publish(bad_path, name="broken.gguf"))
    src = source(model_server.publish(cached_tiny_llama(), name="tiny-chat.gguf"))
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, engines="llama") as run,
    ):
        conn = await welcomed(peer)
        slot = llama_slot(run)
        pid = slot.pid
        fail = await run_fail(conn, offer("job-bad", chat(), bad, model="broken"))
        assert fail.retryable is True
        assert "llama.cpp could not load broken.gguf: " in fail.error
        assert "not within the file bounds" in fail.error, "llama.cpp's own reason"
        # Same host, same session: the next good job runs on it.
        done = await run_json(conn, offer("job-good", chat(), src))
        assert done.result["usage"]["completion_tokens"] >= 1
        assert slot.pid == pid and slot.restarts == 0
        assert model_loads(slot) == 1
        assert run.sup.lanes[0].state.sessions_welcomed == 1
        assert len(peer.connections) == 1
        # Heartbeats still flow on the one connection.
        with anyio.fail_after(5):
            await conn.expect(studio.Heartbeat)
        assert (tmp_path / "models" / "llm" / "broken.gguf").is_file()
        await end_session(run, conn)
