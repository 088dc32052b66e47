"""The model cache budget in a real llama host (``python -m engines --models-max-bytes``):
a model it keeps loaded is held, so a download that needs its room is refused; once the
host unloads it, the next download evicts it. Tiny generated GGUFs from a real HTTP server."""

from __future__ import annotations

from pathlib import Path

from protocol import ipc
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelFile, ModelSource
from tests.engines.host_harness import running_host
from tests.support.file_server import Route, serve_files
from tests.support.models.tiny_llama import write_tiny_llama

TASK = LlmTask(messages=[ChatMessage("user", "hello")], temperature=0.0, max_tokens=2)


def chat(job_id: str, name: str, url: str, size: int) -> ipc.RunJob:
    file = ModelFile(role="model", url=url, filename=f"{name}.gguf", approx_bytes=size)
    source = ModelSource("llama-cpp", [file], ModelCliDefaults(1.0, 8, 512, 512, context_size=256))
    return ipc.RunJob(job_id, name, TASK, source, 60.0)


def test_a_loaded_model_is_never_evicted_an_unloaded_one_is(tmp_path: Path) -> None:
    bodies = {
        name: write_tiny_llama(tmp_path / "src" / f"{name}.gguf", seed=seed).read_bytes()
        for seed, name in enumerate("ab")
    }
    llm = tmp_path / "models" / "llm"
    budget = len(bodies["a"]) + len(bodies["b"]) - 1  # room for one model, not both
    with serve_files() as server:
        urls = {name: server.add(f"/{name}.gguf", Route(body)) for name, body in bodies.items()}
        jobs = {name: (urls[name], len(bodies[name])) for name in bodies}
        args = ("--models-max-bytes", str(budget), "--threads", "1")
        with running_host(tmp_path, *args, engine="llama") as host:
            host.send(chat("j1", "a", *jobs["a"]))
            assert isinstance(host.until(ipc.JobDone)[1].json, dict)
            [loaded] = host.last_resident.models

            host.send(chat("j2", "b", *jobs["b"]))  # `a` is loaded: held, not evicted
            _, failed = host.until(ipc.JobFailed)
            assert "not enough room for b.gguf" in failed.error
            assert "no engine host holds come to only 0 bytes" in failed.error
            assert sorted(p.name for p in llm.iterdir()) == ["a.gguf"]

            host.send(ipc.Unload([loaded.load_key]))
            assert host.expect(ipc.Resident) == ipc.Resident([])
            host.send(chat("j3", "b", *jobs["b"]))  # `a` is no longer held: it goes
            assert isinstance(host.until(ipc.JobDone)[1].json, dict)
        assert sorted(p.name for p in llm.iterdir()) == ["b.gguf"]
        assert "evicted model file op=cache" in host.log()
        assert len(server.requests("/b.gguf")) == 1  # the refused job fetched nothing


def test_the_budget_option_takes_whole_bytes(tmp_path: Path) -> None:
    with running_host(tmp_path, "--models-max-bytes", "-1", wait_ready=False) as host:
        assert host.proc.wait(timeout=30) == 2
    assert "--models-max-bytes: expected a whole number >= 0, got '-1'" in host.log()
