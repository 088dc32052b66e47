"""A real llama host asks before it loads: ``python -m engines --engine llama`` with a tiny
generated GGUF, a real ROUTER in the test. The request names the load key the supervisor
computes from the claim and the file's size; warm models are not asked for again; ``Unload``
and ``Probe`` work on the real engine."""

from __future__ import annotations

from pathlib import Path

from engines.load_keys import load_key
from protocol import ipc
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from tests.engines.host_harness import running_host
from tests.support.models.tiny_llama import write_tiny_llama

SOURCE = ModelSource("llama-cpp", [], ModelCliDefaults(1.0, 8, 512, 512, context_size=256))
TASK = LlmTask(messages=[ChatMessage("user", "hello")], temperature=0.0, max_tokens=2)


def chat(job_id: str, model: str) -> ipc.RunJob:
    return ipc.RunJob(job_id, model, TASK, SOURCE, 60.0)


def test_a_llama_host_asks_before_each_load_and_keeps_two_warm(tmp_path: Path) -> None:
    sizes = {}
    for seed, name in enumerate("abc"):
        path = write_tiny_llama(tmp_path / "models" / "llm" / f"{name}.gguf", seed=seed)
        sizes[name] = path.stat().st_size
    key = {name: load_key("llama", name, SOURCE, TASK) for name in sizes}
    args = ("--ask-before-load", "--max-warm-models", "2", "--threads", "1")
    with running_host(tmp_path, *args, engine="llama") as host:
        assert host.ready is not None
        assert host.ready.compute == ComputeDevice("cpu")
        for job_id, name in (("j1", "a"), ("j2", "b")):
            host.send(chat(job_id, name))
            seen, asked = host.until(ipc.LoadRequest)
            assert seen == [], "nothing was evicted: no Resident before the request"
            assert asked == ipc.LoadRequest(job_id, key[name], sizes[name])
            host.send(ipc.LoadGrant(job_id, granted=True))
            host.expect(ipc.Resident)  # the new model is in
            assert isinstance(host.expect(ipc.JobDone).json, dict)

        host.send(chat("j3", "a"))  # warm: straight to the result
        resident = host.expect(ipc.Resident)
        assert resident.models == [
            ResidentModel(key["b"], sizes["b"]),
            ResidentModel(key["a"], sizes["a"]),
        ]
        host.expect(ipc.JobDone)

        host.send(chat("j4", "c"))  # b, the least recently used, goes before the request
        evicted = host.expect(ipc.Resident)
        assert evicted.models == [ResidentModel(key["a"], sizes["a"])]
        host.expect(ipc.LoadRequest)
        host.send(ipc.LoadGrant("j4", granted=False, reason="no room"))
        failed = host.expect(ipc.JobFailed)  # nothing changed: no Resident before it
        assert host.last_resident == evicted
        assert (failed.reason, failed.retryable) == (ipc.REASON_NO_MEMORY, True)

        host.send(ipc.Unload([key["a"]]))
        assert host.expect(ipc.Resident) == ipc.Resident([])
        host.send(ipc.Probe(2**20))
        assert host.expect(ipc.ProbeResult) == ipc.ProbeResult(True, "cpu: nothing to probe")
