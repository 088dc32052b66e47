"""Wire types of the local studio's own JSON API (``/local/...``), shared by server and client.

camelCase on the wire like the studio protocol. Submissions forbid unknown fields (both
ends ship in this package, so a misspelt field is a caller bug worth a 400); views
tolerate them so an older client can read a newer server. Absent values in views are
explicit ``null``. No I/O here.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from protocol.studio import Capabilities
from protocol.tasks import ModelSource, Task

JobStatusName = Literal["queued", "claimed", "done", "failed"]
RegistrationStatusName = Literal["pending", "approved", "rejected"]

# The studio's gameId for jobs submitted without one.
LOCAL_GAME_ID: Final = "local"
# Longest a single /wait request holds the connection; clients loop for longer waits.
MAX_WAIT_S: Final = 60.0


class JobSubmission(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """``POST /local/jobs``: what to run. ``assetName`` defaults to the job id."""

    model: str
    task: Task
    model_source: ModelSource
    vram_gb_estimate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    game_id: str = LOCAL_GAME_ID
    asset_name: str | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] | None = None


class JobView(msgspec.Struct, rename="camel"):
    """One job as the local API shows it (``GET /local/jobs/{id}``)."""

    id: str
    status: JobStatusName
    kind: str
    model: str
    game_id: str
    asset_name: str
    task: Task
    model_source: ModelSource
    vram_gb_estimate: float
    attempts: int
    max_attempts: int
    claimed_by: str | None
    accepted_at: str | None
    error: str | None
    result: Any
    asset_path: str | None
    asset_url: str | None
    prompt: str | None
    created_at: str
    updated_at: str
    finished_at: str | None


class JobList(msgspec.Struct, rename="camel"):
    jobs: list[JobView]


class RegistrationView(msgspec.Struct, rename="camel"):
    """A registration request (``GET /local/workers/pending``, approve, reject)."""

    request_id: str
    install_id: str
    status: RegistrationStatusName
    reason: str | None
    worker_id: str | None
    user_agent: str
    capabilities: Capabilities
    created_at: str
    decided_at: str | None


class RegistrationList(msgspec.Struct, rename="camel"):
    requests: list[RegistrationView]


class RejectBody(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """``POST /local/workers/pending/{id}/reject``; an empty body means no reason."""

    reason: str = ""


class WorkerView(msgspec.Struct, rename="camel"):
    """A registered worker and, when connected, its live session (``GET /local/workers``)."""

    worker_id: str
    connected: bool
    connected_at: str | None
    last_heartbeat_at: str | None
    capabilities: Capabilities | None
    in_flight: list[str]
    created_at: str


class WorkerList(msgspec.Struct, rename="camel"):
    workers: list[WorkerView]


class LogView(msgspec.Struct, rename="camel"):
    worker_id: str
    ts: str
    level: str
    category: str
    message: str
    job_id: str | None
    received_at: str


class LogList(msgspec.Struct, rename="camel"):
    logs: list[LogView]


class ErrorBody(msgspec.Struct):
    """Every non-2xx answer of the local studio's HTTP routes."""

    error: str
