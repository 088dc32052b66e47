"""The local studio's own JSON API under ``/local`` (operators, CLI, tests).

Jobs: ``POST /local/jobs`` (201 + the job), ``GET /local/jobs[?status=]``,
``GET /local/jobs/{id}``, ``GET /local/jobs/{id}/wait[?until=done,failed&timeout=30]``
(answers as soon as the job is in one of ``until``, or at the timeout with whatever it
is then: a long poll, so nobody sleeps waiting), ``GET /local/jobs/{id}/asset``.
Workers: ``GET /local/workers``, ``GET /local/workers/pending``,
``POST /local/workers/pending/{requestId}/approve``, ``.../reject`` (``{"reason"}``),
``POST /local/workers/{workerId}/revoke`` (its token stops working and a live session is
closed ``auth_failed``/4001; the worker as ``GET /local/workers`` lists it, 404 if unknown).
Logs: ``GET /local/logs[?workerId=&jobId=&limit=]``.

With an admin token configured every route wants ``Authorization: Bearer <token>``
(401 otherwise); without one (the loopback default) the API is open.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from localstudio.api_types import (
    MAX_WAIT_S,
    JobList,
    JobSubmission,
    LogList,
    RegistrationList,
    RejectBody,
    WorkerList,
)
from localstudio.assets import media_type_for
from localstudio.auth import admin_token_matches, bearer_token
from localstudio.dispatcher import Dispatcher
from localstudio.jobs import TERMINAL, JobStatus
from localstudio.records import NewJob, RegistrationRecord
from localstudio.store import Store
from localstudio.views import (
    BadRequestError,
    decode_body,
    error_response,
    job_view,
    json_response,
    log_view,
    registration_view,
    worker_view,
)
from protocol.studio import encode_json
from protocol.tasks import task_kind

Handler = Callable[[Request], Awaitable[Response]]


class LocalApi:
    """Route handlers for the local API; one instance per running server."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        data_dir: Path,
        *,
        admin_token: str | None,
        default_max_attempts: int,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._data_dir = data_dir
        self._admin_token = admin_token
        self._default_max_attempts = default_max_attempts

    def routes(self) -> list[BaseRoute]:
        g = self._guarded
        return [
            Route("/local/jobs", g(self.submit_job), methods=["POST"]),
            Route("/local/jobs", g(self.list_jobs), methods=["GET"]),
            Route("/local/jobs/{job_id}", g(self.get_job), methods=["GET"]),
            Route("/local/jobs/{job_id}/wait", g(self.wait_job), methods=["GET"]),
            Route("/local/jobs/{job_id}/asset", g(self.get_asset), methods=["GET"]),
            Route("/local/workers", g(self.list_workers), methods=["GET"]),
            Route("/local/workers/pending", g(self.list_pending), methods=["GET"]),
            Route("/local/workers/pending/{request_id}/approve", g(self.approve), methods=["POST"]),
            Route("/local/workers/pending/{request_id}/reject", g(self.reject), methods=["POST"]),
            Route("/local/workers/{worker_id}/revoke", g(self.revoke), methods=["POST"]),
            Route("/local/logs", g(self.list_logs), methods=["GET"]),
        ]

    def _guarded(self, handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            if not admin_token_matches(bearer_token(request.headers), self._admin_token):
                return error_response(401, "this local studio wants its admin token")
            try:
                return await handler(request)
            except BadRequestError as exc:
                return error_response(400, str(exc))

        return guarded

    # --- jobs ----------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        body = decode_body(await request.body(), JobSubmission)
        job = self._dispatcher.submit(
            NewJob(
                kind=task_kind(body.task),
                model=body.model,
                game_id=body.game_id,
                asset_name=body.asset_name,
                task_json=encode_json(body.task).decode(),
                model_source_json=encode_json(body.model_source).decode(),
                vram_gb_estimate=body.vram_gb_estimate,
                max_attempts=body.max_attempts or self._default_max_attempts,
            )
        )
        return json_response(job_view(job), 201)

    async def list_jobs(self, request: Request) -> Response:
        raw = request.query_params.get("status")
        try:
            status = None if raw is None else JobStatus(raw)
        except ValueError:
            raise BadRequestError(f"unknown status {raw!r}") from None
        jobs = self._store.jobs.recent(status)
        return json_response(JobList(jobs=[job_view(job) for job in jobs]))

    async def get_job(self, request: Request) -> Response:
        job = self._store.jobs.get(request.path_params["job_id"])
        if job is None:
            return error_response(404, "unknown job")
        return json_response(job_view(job))

    async def wait_job(self, request: Request) -> Response:
        job_id: str = request.path_params["job_id"]
        until = _parse_until(request.query_params.get("until"))
        timeout_s = _parse_float(request.query_params.get("timeout"), MAX_WAIT_S, "timeout")
        deadline = anyio.current_time() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while True:
            job = self._store.jobs.get(job_id)
            if job is None:
                return error_response(404, "unknown job")
            remaining = deadline - anyio.current_time()
            if job.status in until or remaining <= 0 or self._dispatcher.closing:
                return json_response(job_view(job))
            await self._dispatcher.wait_for_change(remaining)

    async def get_asset(self, request: Request) -> Response:
        job = self._store.jobs.get(request.path_params["job_id"])
        if job is None or job.asset_path is None:
            return error_response(404, "no asset for this job")
        path = self._data_dir / job.asset_path
        if not await anyio.Path(path).is_file():
            return error_response(404, f"asset file {job.asset_path} is missing")
        return FileResponse(path, media_type=media_type_for(job.asset_path))

    # --- workers -------------------------------------------------------------------------

    async def list_workers(self, request: Request) -> Response:
        views = [
            worker_view(worker, self._dispatcher.session_of(worker.id))
            for worker in self._store.workers.all()
        ]
        return json_response(WorkerList(workers=views))

    async def list_pending(self, request: Request) -> Response:
        pending = [registration_view(r) for r in self._store.workers.pending_requests()]
        return json_response(RegistrationList(requests=pending))

    async def approve(self, request: Request) -> Response:
        record = self._store.workers.approve_request(request.path_params["request_id"])
        return _decision(record, "approved")

    async def reject(self, request: Request) -> Response:
        raw = await request.body()
        body = decode_body(raw, RejectBody) if raw.strip() else RejectBody()
        record = self._store.workers.reject_request(request.path_params["request_id"], body.reason)
        return _decision(record, "rejected")

    async def revoke(self, request: Request) -> Response:
        worker_id: str = request.path_params["worker_id"]
        if not self._dispatcher.revoke(worker_id):
            return error_response(404, f"unknown worker {worker_id}")
        worker = self._store.workers.get(worker_id)
        if worker is None:  # revoke just found it; nothing deletes workers
            return error_response(404, f"unknown worker {worker_id}")
        return json_response(worker_view(worker, self._dispatcher.session_of(worker_id)))

    # --- logs ----------------------------------------------------------------------------

    async def list_logs(self, request: Request) -> Response:
        limit = int(_parse_float(request.query_params.get("limit"), 200, "limit"))
        records = self._store.logs.recent(
            worker_id=request.query_params.get("workerId"),
            job_id=request.query_params.get("jobId"),
            limit=max(1, min(limit, 5000)),
        )
        return json_response(LogList(logs=[log_view(r) for r in records]))


def _decision(record: RegistrationRecord | None, wanted: str) -> Response:
    if record is None:
        return error_response(404, "unknown registration request")
    if record.status != wanted:
        return error_response(409, f"registration request {record.id} is {record.status}")
    return json_response(registration_view(record))


def _parse_until(raw: str | None) -> frozenset[JobStatus]:
    if raw is None:
        return TERMINAL
    try:
        wanted = frozenset(JobStatus(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError:
        wanted = frozenset()
    if not wanted:
        raise BadRequestError(f"until must list job statuses, got {raw!r}")
    return wanted


def _parse_float(raw: str | None, default: float, name: str) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadRequestError(f"{name} must be a number, got {raw!r}")
    return value
