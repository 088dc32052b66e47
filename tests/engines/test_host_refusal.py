"""A run message the host cannot decode is failed at once, not dropped (real ZeroMQ)."""

from __future__ import annotations

import msgspec
import pytest
import zmq

from engines.host import EngineHost
from protocol import ipc


def test_undecodable_run_message_is_failed_not_dropped() -> None:
    ctx = zmq.Context()
    host_end, supervisor_end = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        host_end.bind("inproc://refusal")
        supervisor_end.connect("inproc://refusal")
        data = msgspec.msgpack.encode({"t": "run", "job_id": "job-1", "bogus": 1})
        with pytest.raises(ipc.IpcDecodeError) as caught:
            ipc.decode_supervisor(data)
        EngineHost._refuse_undecodable_job(host_end, data, str(caught.value))
        assert supervisor_end.poll(2000)
        msg = ipc.decode_host(supervisor_end.recv())
        assert isinstance(msg, ipc.JobFailed)
        assert (msg.job_id, msg.retryable, msg.reason) == ("job-1", False, ipc.REASON_BAD_INPUT)
        assert "refused the job" in msg.error
        # Garbage that names no job gets no reply.
        EngineHost._refuse_undecodable_job(host_end, b"\xc1not msgpack", "bad")
        EngineHost._refuse_undecodable_job(host_end, msgspec.msgpack.encode({"t": "cancel"}), "x")
        assert not supervisor_end.poll(100)
    finally:
        host_end.close(linger=0)
        supervisor_end.close(linger=0)
        ctx.term()
