"""``supervisor studio ...`` and ``supervisor submit``: the local studio's operator side.

These commands talk to a local studio over its ``/local`` HTTP API (``localstudio.client``,
imported lazily: the supervisor runtime itself never loads the local studio package).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import msgspec

from protocol.tasks import (
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
from supervisor.errors import UsageError

DEFAULT_STUDIO_URL: Final = "http://127.0.0.1:9790"
BINARY_KINDS: Final = frozenset({"image", "audio_tts", "video"})


def build_task(kind: str, prompt: str, options: dict[str, Any]) -> Task:
    """A task of ``kind`` from the command line's prompt and options (None = default)."""
    opts = {k: v for k, v in options.items() if v is not None}
    match kind:
        case "image":
            return ImageTask(prompt=prompt, **opts)
        case "llm":
            system = opts.pop("system", None)
            return LlmTask(messages=[ChatMessage("user", prompt)], system=system, **opts)
        case "audio_stt":
            return AudioSttTask(input_url=prompt, **opts)
        case "audio_tts":
            return AudioTtsTask(text=prompt, **opts)
        case "video":
            return VideoTask(prompt=prompt, **opts)
    raise UsageError(f"unknown kind `{kind}`; choose image, llm, audio_stt, audio_tts or video")


def build_source(model: str, engine: str | None, files: list[str]) -> ModelSource:
    """``--file ROLE=URL[#SHA256]`` options into a ModelSource; engine inferred for synthetic."""
    if engine is None:
        if not model.startswith("synthetic"):
            raise UsageError(f"model `{model}` needs --engine (sd-cpp, llama-cpp or synthetic)")
        engine = "synthetic"
    parsed = []
    for spec in files:
        role, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise UsageError(f"--file wants ROLE=URL[#SHA256], got `{spec}`")
        url, _, sha = rest.partition("#")
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        parsed.append(ModelFile(role=role, url=url, filename=name, sha256=sha or None))
    return ModelSource(
        engine, parsed, ModelCliDefaults(cfg_scale=1.0, steps=8, width=512, height=512)
    )


def submit(
    studio_url: str,
    task: Task,
    source: ModelSource,
    model: str,
    *,
    out_dir: Path,
    timeout_s: float,
    vram_gb: float = 0.0,
) -> tuple[bool, str]:
    """Queue, wait, save the result; (succeeded, text to print)."""
    from localstudio.client import LocalStudioClient

    with LocalStudioClient(studio_url) as client:
        job = client.submit_job(model, task, source, vram_gb_estimate=vram_gb)
        job = client.wait_for_job(job.id, timeout_s=timeout_s)
        if job.status != "done":
            return False, f"job {job.id} {job.status} after {job.attempts} attempt(s): {job.error}"
        out_dir.mkdir(parents=True, exist_ok=True)
        if job.kind in BINARY_KINDS:
            data = client.get_asset(job.id)
            ext = Path(job.asset_path or "").suffix or ".bin"
            path = out_dir / f"{job.id}{ext}"
            path.write_bytes(data)
            return True, f"job {job.id} done: {len(data)} bytes saved to {path}"
        path = out_dir / f"{job.id}.json"
        path.write_text(json.dumps(job.result, indent=2) + "\n")
        return (
            True,
            f"job {job.id} done: result saved to {path}\n{json.dumps(job.result, indent=2)}",
        )


def pending(studio_url: str) -> str:
    from localstudio.client import LocalStudioClient

    with LocalStudioClient(studio_url) as client:
        rows = client.pending()
    if not rows:
        return "no pending registration requests"
    return "\n".join(
        f"{r.request_id}  {r.capabilities.machine_name}  {r.user_agent}  {r.created_at}"
        for r in rows
    )


def decide(studio_url: str, request_id: str, approve: bool, reason: str = "") -> str:
    from localstudio.client import LocalStudioClient

    with LocalStudioClient(studio_url) as client:
        view = client.approve(request_id) if approve else client.reject(request_id, reason)
    return f"{view.request_id}: {view.status}" + (f" as {view.worker_id}" if view.worker_id else "")


def list_jobs(studio_url: str) -> str:
    from localstudio.client import LocalStudioClient

    with LocalStudioClient(studio_url) as client:
        jobs = client.list_jobs()
    return (
        "\n".join(
            f"{j.id}  {j.status:<8} {j.kind:<9} {j.model}  attempts={j.attempts}" for j in jobs
        )
        or "no jobs"
    )


def parse_json_option(text: str | None) -> Any:
    if text is None:
        return None
    path = Path(text)
    raw = path.read_text() if path.is_file() else text
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise UsageError(f"--json-schema is neither a file nor valid JSON: {exc}") from None
