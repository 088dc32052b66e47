"""Clients for the local studio's ``/local`` API: ``LocalStudioClient`` (blocking) and
``AsyncLocalStudioClient`` (anyio/asyncio), with the same methods.

Each operation is described once as a ``_Call`` (method, path, body, how to decode the
answer); the two classes only differ in how they send it. Any non-2xx answer raises
``StudioApiError`` with the status and the server's message; ``wait_for_job`` long-polls
``/local/jobs/{id}/wait`` (the server answers as soon as the job changes state, so
nobody sleeps) and raises ``JobWaitTimeoutError`` at its deadline. Only the operator API is
here: workers speak the studio protocol, not this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

import anyio
import httpx
import msgspec

from localstudio.api_types import (
    MAX_WAIT_S,
    ErrorBody,
    JobList,
    JobStatusName,
    JobView,
    LogList,
    LogView,
    RegistrationList,
    RegistrationView,
    WorkerList,
    WorkerView,
)
from localstudio.errors import JobWaitTimeoutError, StudioApiError
from protocol.tasks import ModelSource, Task

T = TypeVar("T")

DEFAULT_TIMEOUT_S: Final = 30.0
TERMINAL_STATUSES: Final[tuple[JobStatusName, ...]] = ("done", "failed")
# Extra time the HTTP timeout of a long poll gets beyond the server-side wait.
_WAIT_SLACK_S: Final = 10.0

_job = msgspec.json.Decoder(JobView)
_jobs = msgspec.json.Decoder(JobList)
_registration = msgspec.json.Decoder(RegistrationView)
_registrations = msgspec.json.Decoder(RegistrationList)
_worker = msgspec.json.Decoder(WorkerView)
_workers = msgspec.json.Decoder(WorkerList)
_logs = msgspec.json.Decoder(LogList)
_error = msgspec.json.Decoder(ErrorBody)


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[bytes], T]
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


def _finish(call: _Call[T], response: httpx.Response) -> T:
    if not response.is_success:
        try:
            message = _error.decode(response.content).error
        except msgspec.DecodeError:
            message = response.text.strip()[:300]
        raise StudioApiError(call.method, call.path, response.status_code, message)
    return call.decode(response.content)


def _submit(
    model: str,
    task: Task | Mapping[str, Any],
    model_source: ModelSource | Mapping[str, Any],
    vram_gb_estimate: float,
    game_id: str | None,
    asset_name: str | None,
    max_attempts: int | None,
) -> _Call[JobView]:
    body: dict[str, Any] = {
        "model": model,
        "task": task,
        "modelSource": model_source,
        "vramGbEstimate": vram_gb_estimate,
    }
    optional = {"gameId": game_id, "assetName": asset_name, "maxAttempts": max_attempts}
    body.update({key: value for key, value in optional.items() if value is not None})
    return _Call("POST", "/local/jobs", _job.decode, body=msgspec.json.encode(body))


def _wait(job_id: str, until: Collection[str], wait_s: float) -> _Call[JobView]:
    params = {"until": ",".join(until), "timeout": f"{wait_s:.3f}"}
    return _Call(
        "GET",
        f"/local/jobs/{job_id}/wait",
        _job.decode,
        params=params,
        timeout_s=wait_s + _WAIT_SLACK_S,
    )


def _list_jobs(status: str | None) -> _Call[list[JobView]]:
    params = {} if status is None else {"status": status}
    return _Call("GET", "/local/jobs", lambda raw: _jobs.decode(raw).jobs, params=params)


def _logs_call(worker_id: str | None, job_id: str | None, limit: int) -> _Call[list[LogView]]:
    params = {"limit": str(limit)}
    if worker_id is not None:
        params["workerId"] = worker_id
    if job_id is not None:
        params["jobId"] = job_id
    return _Call("GET", "/local/logs", lambda raw: _logs.decode(raw).logs, params=params)


def _decide(request_id: str, verb: str, reason: str | None = None) -> _Call[RegistrationView]:
    body = None if reason is None else msgspec.json.encode({"reason": reason})
    path = f"/local/workers/pending/{request_id}/{verb}"
    return _Call("POST", path, _registration.decode, body=body)


def _revoke(worker_id: str) -> _Call[WorkerView]:
    return _Call("POST", f"/local/workers/{worker_id}/revoke", _worker.decode)


_PENDING: Final = _Call(
    "GET", "/local/workers/pending", lambda raw: _registrations.decode(raw).requests
)
_WORKERS: Final = _Call("GET", "/local/workers", lambda raw: _workers.decode(raw).workers)


def _headers(admin_token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if admin_token:
        headers["Authorization"] = f"Bearer {admin_token}"
    return headers


class LocalStudioClient:
    """Blocking client; use as a context manager or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        *,
        admin_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=_headers(admin_token),
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout_s is None else call.timeout_s
        response = self._http.request(
            call.method, call.path, content=call.body, params=call.params, timeout=timeout
        )
        return _finish(call, response)

    def submit_job(
        self,
        model: str,
        task: Task | Mapping[str, Any],
        model_source: ModelSource | Mapping[str, Any],
        *,
        vram_gb_estimate: float = 0.0,
        game_id: str | None = None,
        asset_name: str | None = None,
        max_attempts: int | None = None,
    ) -> JobView:
        """Queue a job; the studio offers it as soon as a fitting worker is free."""
        return self._run(
            _submit(model, task, model_source, vram_gb_estimate, game_id, asset_name, max_attempts)
        )

    def get_job(self, job_id: str) -> JobView:
        return self._run(_Call("GET", f"/local/jobs/{job_id}", _job.decode))

    def list_jobs(self, status: JobStatusName | None = None) -> list[JobView]:
        return self._run(_list_jobs(status))

    def wait_for_job(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        until: Collection[JobStatusName] = TERMINAL_STATUSES,
    ) -> JobView:
        """Block until the job's status is in ``until`` (default: done or failed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            job = self._run(_wait(job_id, until, min(remaining, MAX_WAIT_S)))
            if job.status in until:
                return job
            if remaining <= 0:
                raise JobWaitTimeoutError(job_id, job.status, timeout_s)

    def get_asset(self, job_id: str) -> bytes:
        return self._run(_Call("GET", f"/local/jobs/{job_id}/asset", bytes))

    def pending(self) -> list[RegistrationView]:
        return self._run(_PENDING)

    def approve(self, request_id: str) -> RegistrationView:
        return self._run(_decide(request_id, "approve"))

    def reject(self, request_id: str, reason: str = "") -> RegistrationView:
        return self._run(_decide(request_id, "reject", reason))

    def workers(self) -> list[WorkerView]:
        return self._run(_WORKERS)

    def revoke_worker(self, worker_id: str) -> WorkerView:
        """Take the worker's token away; its live session is closed ``auth_failed``/4001."""
        return self._run(_revoke(worker_id))

    def logs(
        self, *, worker_id: str | None = None, job_id: str | None = None, limit: int = 200
    ) -> list[LogView]:
        return self._run(_logs_call(worker_id, job_id, limit))


class AsyncLocalStudioClient:
    """The same operations for async code; use ``async with`` or ``await aclose()``."""

    def __init__(
        self,
        base_url: str,
        *,
        admin_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(admin_token),
            timeout=timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout_s is None else call.timeout_s
        response = await self._http.request(
            call.method, call.path, content=call.body, params=call.params, timeout=timeout
        )
        return _finish(call, response)

    async def submit_job(
        self,
        model: str,
        task: Task | Mapping[str, Any],
        model_source: ModelSource | Mapping[str, Any],
        *,
        vram_gb_estimate: float = 0.0,
        game_id: str | None = None,
        asset_name: str | None = None,
        max_attempts: int | None = None,
    ) -> JobView:
        """Queue a job; the studio offers it as soon as a fitting worker is free."""
        return await self._run(
            _submit(model, task, model_source, vram_gb_estimate, game_id, asset_name, max_attempts)
        )

    async def get_job(self, job_id: str) -> JobView:
        return await self._run(_Call("GET", f"/local/jobs/{job_id}", _job.decode))

    async def list_jobs(self, status: JobStatusName | None = None) -> list[JobView]:
        return await self._run(_list_jobs(status))

    async def wait_for_job(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        until: Collection[JobStatusName] = TERMINAL_STATUSES,
    ) -> JobView:
        """Wait until the job's status is in ``until`` (default: done or failed)."""
        deadline = anyio.current_time() + timeout_s
        while True:
            remaining = max(0.0, deadline - anyio.current_time())
            job = await self._run(_wait(job_id, until, min(remaining, MAX_WAIT_S)))
            if job.status in until:
                return job
            if remaining <= 0:
                raise JobWaitTimeoutError(job_id, job.status, timeout_s)

    async def get_asset(self, job_id: str) -> bytes:
        return await self._run(_Call("GET", f"/local/jobs/{job_id}/asset", bytes))

    async def pending(self) -> list[RegistrationView]:
        return await self._run(_PENDING)

    async def approve(self, request_id: str) -> RegistrationView:
        return await self._run(_decide(request_id, "approve"))

    async def reject(self, request_id: str, reason: str = "") -> RegistrationView:
        return await self._run(_decide(request_id, "reject", reason))

    async def workers(self) -> list[WorkerView]:
        return await self._run(_WORKERS)

    async def revoke_worker(self, worker_id: str) -> WorkerView:
        """Take the worker's token away; its live session is closed ``auth_failed``/4001."""
        return await self._run(_revoke(worker_id))

    async def logs(
        self, *, worker_id: str | None = None, job_id: str | None = None, limit: int = 200
    ) -> list[LogView]:
        return await self._run(_logs_call(worker_id, job_id, limit))
