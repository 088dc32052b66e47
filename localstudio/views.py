"""Database records and live sessions turned into the local API's views, plus the small
HTTP helpers every route shares (JSON answers, JSON errors, strict body decoding).

Pure apart from building starlette ``Response`` objects; no database or socket access.
"""

from __future__ import annotations

from typing import TypeVar, cast

import msgspec
from starlette.responses import Response

from localstudio.api_types import (
    ErrorBody,
    JobView,
    LogView,
    RegistrationStatusName,
    RegistrationView,
    WorkerView,
)
from localstudio.records import JobRecord, LogRecord, RegistrationRecord, WorkerRecord
from localstudio.session import WorkerSession
from protocol.studio import Capabilities, encode_json
from protocol.tasks import ModelSource, Task

T = TypeVar("T")

_task_decoder = msgspec.json.Decoder(Task)
_source_decoder = msgspec.json.Decoder(ModelSource)
_caps_decoder = msgspec.json.Decoder(Capabilities)


class BadRequestError(ValueError):
    """A request body or parameter that does not decode; the message says why."""


def json_response(value: object, status: int = 200) -> Response:
    return Response(encode_json(value), status_code=status, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response(ErrorBody(error=message), status)


def decode_body(raw: bytes, type_: type[T]) -> T:
    """Decode a JSON body strictly as ``type_``; BadRequestError names the offending field."""
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.DecodeError as exc:
        raise BadRequestError(str(exc)) from None


def job_view(job: JobRecord) -> JobView:
    return JobView(
        id=job.id,
        status=job.status.value,
        kind=job.kind,
        model=job.model,
        game_id=job.game_id,
        asset_name=job.asset_name,
        task=_task_decoder.decode(job.task_json),
        model_source=_source_decoder.decode(job.model_source_json),
        vram_gb_estimate=job.vram_gb_estimate,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        claimed_by=job.claimed_by,
        accepted_at=job.accepted_at,
        error=job.error,
        result=None if job.result_json is None else msgspec.json.decode(job.result_json),
        asset_path=job.asset_path,
        asset_url=None if job.asset_path is None else f"/local/jobs/{job.id}/asset",
        prompt=job.prompt,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


def registration_view(record: RegistrationRecord) -> RegistrationView:
    return RegistrationView(
        request_id=record.id,
        install_id=record.install_id,
        status=cast(RegistrationStatusName, record.status),
        reason=record.reason,
        worker_id=record.worker_id,
        user_agent=record.user_agent,
        capabilities=_caps_decoder.decode(record.capabilities_json),
        created_at=record.created_at,
        decided_at=record.decided_at,
    )


def worker_view(worker: WorkerRecord, session: WorkerSession | None) -> WorkerView:
    live = session is not None and session.accepts_offers
    if session is not None and session.capabilities is not None:
        capabilities: Capabilities | None = session.capabilities
    else:
        capabilities = _caps_decoder.decode(worker.capabilities_json)
    return WorkerView(
        worker_id=worker.id,
        connected=live,
        connected_at=session.connected_at if session is not None else None,
        last_heartbeat_at=(
            session.last_heartbeat_at
            if session is not None and session.last_heartbeat_at is not None
            else worker.last_heartbeat_at
        ),
        capabilities=capabilities,
        in_flight=sorted(session.held) if session is not None else [],
        created_at=worker.created_at,
    )


def log_view(record: LogRecord) -> LogView:
    return LogView(
        worker_id=record.worker_id,
        ts=record.ts,
        level=record.level,
        category=record.category,
        message=record.message,
        job_id=record.job_id,
        received_at=record.received_at,
    )
