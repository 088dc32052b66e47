"""``supervisor studio ...`` and ``supervisor submit``: the local studio's operator side.

These commands talk to a local studio over its ``/local`` HTTP API (``localstudio.client``,
imported lazily: the supervisor runtime itself never loads the local studio package). The
client's own errors and httpx's are turned into this package's (``talking_to``), so a
studio that is not running is one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
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
from supervisor.errors import (
    JobFailedError,
    JobWaitTimeout,
    LocalStudioError,
    StudioHttpError,
    StudioResponseError,
    StudioTransportError,
    SubmitError,
    UrlError,
    UsageError,
)

if TYPE_CHECKING:
    from localstudio.client import LocalStudioClient

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


@contextlib.contextmanager
def talking_to(studio_url: str, op: str) -> Iterator[LocalStudioClient]:
    """A client for the local studio whose failures come out as this package's errors:
    StudioTransportError (nobody answers), StudioHttpError (non-2xx), StudioResponseError
    (an answer that does not decode), UrlError (a ``--studio`` that is no http(s) URL) and
    JobWaitTimeout, so the CLI prints one ``error:`` line and the table's exit code."""
    from localstudio.client import LocalStudioClient
    from localstudio.errors import JobWaitTimeoutError, StudioApiError

    if urlsplit(studio_url).scheme not in ("http", "https"):
        raise UrlError(f'invalid --studio "{studio_url}": expected http://HOST:PORT')
    try:
        with LocalStudioClient(studio_url) as client:
            yield client
    except StudioApiError as exc:
        raise StudioHttpError(op, exc.status, exc.message) from None
    except JobWaitTimeoutError as exc:
        raise JobWaitTimeout(exc.job_id, exc.status, exc.timeout_s) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise UrlError(f'invalid --studio "{studio_url}": {exc}') from None
    except httpx.TransportError as exc:
        raise StudioTransportError(
            op,
            f"{str(exc) or type(exc).__name__} (is a local studio running at {studio_url}? "
            "`supervisor studio serve` or `supervisor start --local` runs one)",
        ) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StudioResponseError(op, str(exc)) from None


def serve(argv: list[str]) -> int:
    """Run the local studio in this process until a signal (``localstudio.__main__``). Its
    own refusals (a port it cannot listen on, unsafe settings), which its task group wraps
    in an ExceptionGroup, come out as one LocalStudioError."""
    from localstudio.__main__ import main as studio_main
    from localstudio.errors import LocalStudioError as StudioRefusal
    from localstudio.errors import StudioStartupError

    try:
        return studio_main(argv)
    except (StudioRefusal, ExceptionGroup) as exc:
        refusal = _first_refusal(exc, StudioRefusal)
        if refusal is None:
            raise
        hint = ""
        if isinstance(refusal, StudioStartupError):
            hint = "; pick another --port, or stop what listens there"
        raise LocalStudioError(f"{refusal}{hint}") from None


def _first_refusal(exc: BaseException, kind: type[Exception]) -> Exception | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if found := _first_refusal(inner, kind):
                return found
    return None


def submit(
    studio_url: str,
    task: Task,
    source: ModelSource,
    model: str,
    *,
    out_dir: Path,
    timeout_s: float,
    vram_gb: float = 0.0,
) -> str:
    """Queue, wait, save the result; the text to print. Raises JobFailedError when the job
    fails, JobWaitTimeout at ``timeout_s``, SubmitError when the result cannot be saved."""
    if not timeout_s > 0:
        raise UsageError(f"--timeout must be a number of seconds > 0, got {timeout_s:g}")
    _check_writable(out_dir)
    with talking_to(studio_url, "submit") as client:
        job = client.submit_job(model, task, source, vram_gb_estimate=vram_gb)
        job = client.wait_for_job(job.id, timeout_s=timeout_s)
        if job.status != "done":
            raise JobFailedError(job.id, job.attempts, job.error)
        data = client.get_asset(job.id) if job.kind in BINARY_KINDS else None
    if data is not None:
        ext = Path(job.asset_path or "").suffix or ".bin"
        path = _save(out_dir, f"{job.id}{ext}", data)
        return f"job {job.id} done: {len(data)} bytes saved to {path}"
    text = json.dumps(job.result, indent=2)
    path = _save(out_dir, f"{job.id}.json", (text + "\n").encode())
    return f"job {job.id} done: result saved to {path}\n{text}"


def _check_writable(out_dir: Path) -> None:
    """Refuse before queueing: a job whose result cannot be saved is GPU time thrown away."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UsageError(
            f"--out {out_dir} is not a writable directory: {exc.strerror or exc}; "
            "nothing was queued"
        ) from None


def _save(out_dir: Path, name: str, data: bytes) -> Path:
    path = out_dir / name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise SubmitError(
            f"cannot save the result to {path}: {exc.strerror or exc}; the job is done on the "
            "studio: pass another --out"
        ) from None
    return path


def pending(studio_url: str) -> str:
    with talking_to(studio_url, "studio pending") as client:
        rows = client.pending()
    if not rows:
        return "no pending registration requests"
    return "\n".join(
        f"{r.request_id}  {r.capabilities.machine_name}  {r.user_agent}  {r.created_at}"
        for r in rows
    )


def decide(studio_url: str, request_id: str, approve: bool, reason: str = "") -> str:
    op = "studio approve" if approve else "studio reject"
    with talking_to(studio_url, op) as client:
        view = client.approve(request_id) if approve else client.reject(request_id, reason)
    return f"{view.request_id}: {view.status}" + (f" as {view.worker_id}" if view.worker_id else "")


def revoke(studio_url: str, worker_id: str) -> str:
    with talking_to(studio_url, "studio revoke") as client:
        view = client.revoke_worker(worker_id)
    return f"worker {view.worker_id} revoked: its token no longer works; its session is closed"


def list_jobs(studio_url: str) -> str:
    with talking_to(studio_url, "studio jobs") as client:
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
    try:
        raw = path.read_text() if path.is_file() else text
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--json-schema: cannot read {path}: {exc}") from None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise UsageError(f"--json-schema is neither a file nor valid JSON: {exc}") from None
