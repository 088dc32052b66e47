"""The studio surfaces a worker talks to (protocol.md §1, §6), under ``/graphics/api``.

- ``POST /workers/register-request``: no auth; dedups on a pending install id;
- ``GET /workers/register-requests/{requestId}``: Bearer raw registration secret; 404 for
  an unknown request (the worker then starts over), 401 for a wrong secret; every
  approved poll mints a fresh token and stores only its hash;
- ``GET /workers/{workerId}/connect``: the WebSocket (``connection``);
- ``POST /workers/{workerId}/jobs/{jobId}/complete``: Bearer worker token; the multipart
  result (``prompt``, ``ext``, file ``image``); 409 unless the job is claimed by that
  worker.
Rules about jobs live in the dispatcher; this module parses, authenticates and answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from localstudio.assets import asset_relpath, store_upload, valid_ext
from localstudio.auth import bearer_token, is_sha256_hex, mint_token, secret_matches, sha256_hex
from localstudio.connection import serve_worker_socket
from localstudio.dispatcher import Dispatcher
from localstudio.jobs import JobStatus
from localstudio.store import Store
from localstudio.views import BadRequestError, decode_body, error_response, json_response
from protocol.studio import (
    API_PREFIX,
    RegisterRequest,
    RegisterRequestAccepted,
    RegistrationApproved,
    RegistrationPending,
    RegistrationRejected,
    RegistrationStatus,
    encode_json,
)

log = logging.getLogger("localstudio")


class WorkerApi:
    """Route handlers for workers; one instance per running server."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        data_dir: Path,
        *,
        auto_approve: bool,
        heartbeat_timeout_s: float,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._data_dir = data_dir
        self._auto_approve = auto_approve
        self._heartbeat_timeout_s = heartbeat_timeout_s

    def routes(self) -> list[BaseRoute]:
        p = f"{API_PREFIX}/workers"
        return [
            Route(f"{p}/register-request", self.register_request, methods=["POST"]),
            Route(f"{p}/register-requests/{{request_id}}", self.poll_request, methods=["GET"]),
            WebSocketRoute(f"{p}/{{worker_id}}/connect", self.connect),
            Route(f"{p}/{{worker_id}}/jobs/{{job_id}}/complete", self.complete, methods=["POST"]),
        ]

    async def register_request(self, request: Request) -> Response:
        try:
            body = decode_body(await request.body(), RegisterRequest)
        except BadRequestError as exc:
            return error_response(400, f"invalid register request: {exc}")
        if not body.install_id.strip():
            return error_response(400, "installId must not be empty")
        if not is_sha256_hex(body.registration_secret_hash):
            return error_response(400, "registrationSecretHash must be 64 lowercase hex digits")
        record = self._store.workers.upsert_pending_request(
            body.install_id,
            body.registration_secret_hash,
            encode_json(body.capabilities).decode(),
            body.user_agent,
        )
        log.info("registration request %s from install %s", record.id, body.install_id)
        if self._auto_approve:
            self._store.workers.approve_request(record.id)
            log.info("registration request %s approved automatically", record.id)
        return json_response(RegisterRequestAccepted(request_id=record.id, status="pending"))

    async def poll_request(self, request: Request) -> Response:
        record = self._store.workers.request(request.path_params["request_id"])
        if record is None:
            return error_response(404, "unknown registration request")
        secret = bearer_token(request.headers)
        if secret is None or not secret_matches(secret, record.secret_hash):
            return error_response(401, "invalid registration secret")
        answer: RegistrationStatus
        if record.status == "approved" and record.worker_id is not None:
            token = mint_token()
            self._store.workers.set_token(record.worker_id, sha256_hex(token))
            answer = RegistrationApproved(worker_id=record.worker_id, auth_token=token)
        elif record.status == "rejected":
            answer = RegistrationRejected(reason=record.reason or "")
        else:
            answer = RegistrationPending()
        return json_response(answer)

    async def connect(self, websocket: WebSocket) -> None:
        await serve_worker_socket(websocket, self._dispatcher, self._heartbeat_timeout_s)

    async def complete(self, request: Request) -> Response:
        worker_id: str = request.path_params["worker_id"]
        job_id: str = request.path_params["job_id"]
        token = bearer_token(request.headers)
        if token is None or not self._dispatcher.token_valid(worker_id, token):
            return error_response(401, "invalid or missing worker token")
        conflict = self._claim_conflict(worker_id, job_id)
        if conflict is not None:
            return conflict
        async with request.form(max_files=1, max_fields=8) as form:
            ext, image, prompt = form.get("ext"), form.get("image"), form.get("prompt")
            if not isinstance(ext, str) or not valid_ext(ext.lower()):
                return error_response(400, "ext must be a short alphanumeric file extension")
            if not isinstance(image, UploadFile):
                return error_response(400, "missing file part 'image'")
            if prompt is not None and not isinstance(prompt, str):
                return error_response(400, "prompt must be a text part")
            relpath = asset_relpath(job_id, ext.lower())
            size = await store_upload(image, self._data_dir, relpath)
        done = self._dispatcher.complete_upload(worker_id, job_id, relpath, prompt)
        if done is None:
            return error_response(409, f"job {job_id} is no longer claimed by {worker_id}")
        log.info("stored %d bytes for %s at %s", size, job_id, relpath)
        return json_response({"ok": True})

    def _claim_conflict(self, worker_id: str, job_id: str) -> Response | None:
        job = self._store.jobs.get(job_id)
        if job is None:
            return error_response(404, f"unknown job {job_id}")
        if job.status is not JobStatus.CLAIMED or job.claimed_by != worker_id:
            return error_response(409, f"job {job_id} is not claimed by {worker_id}")
        return None
