"""`supervisor studio revoke` against a real `supervisor studio serve` process, with a raw
WebSocket worker holding a welcomed session on it."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from supervisor.exit_codes import ExitCode
from tests.localstudio.test_localstudio import capabilities
from tests.supervisor.cli.test_cli_errors import (
    CLOSED_STUDIO,
    assert_one_error,
    cli,
    served_studio,
)

FRAME_TIMEOUT_S = 10.0  # a loaded 2-core runner


@pytest.fixture
def auto_approving_studio(tmp_path: Path) -> Iterator[str]:
    """A real local studio (`supervisor studio serve --auto-approve`) on a free port."""
    with served_studio(tmp_path, "--auto-approve") as url:
        yield url


def registered_worker(studio_url: str) -> tuple[str, str]:
    """Register with the auto-approving studio: (worker id, token)."""
    secret = secrets.token_hex(32)
    body = {
        "installId": secrets.token_hex(8),
        "registrationSecretHash": hashlib.sha256(secret.encode()).hexdigest(),
        "capabilities": capabilities(),
        "userAgent": "studio-worker/0.5.0",
    }
    with httpx.Client(base_url=studio_url, timeout=FRAME_TIMEOUT_S) as http:
        posted = http.post("/graphics/api/workers/register-request", json=body).json()
        answer: dict[str, Any] = http.get(
            f"/graphics/api/workers/register-requests/{posted['requestId']}",
            headers={"Authorization": f"Bearer {secret}"},
        ).json()
    assert answer["status"] == "approved", answer
    return answer["workerId"], answer["authToken"]


def test_studio_revoke_closes_the_session_and_kills_the_token(
    tmp_path: Path, auto_approving_studio: str
) -> None:
    worker_id, token = registered_worker(auto_approving_studio)
    ws_url = auto_approving_studio.replace("http://", "ws://")
    with connect(
        f"{ws_url}/graphics/api/workers/{worker_id}/connect",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=FRAME_TIMEOUT_S,
    ) as ws:
        ws.send(json.dumps({"type": "hello", "authToken": token, "capabilities": capabilities()}))
        assert json.loads(ws.recv(timeout=FRAME_TIMEOUT_S))["type"] == "welcome"

        done = cli(tmp_path, "studio", "revoke", worker_id, "--studio", auto_approving_studio)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        assert done.stdout == (
            f"worker {worker_id} revoked: its token no longer works; its session is closed\n"
        )

        error = json.loads(ws.recv(timeout=FRAME_TIMEOUT_S))
        assert (error["type"], error["code"]) == ("error", "auth_failed"), error
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=FRAME_TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001

    with httpx.Client(base_url=auto_approving_studio, timeout=FRAME_TIMEOUT_S) as http:
        workers = http.get("/local/workers").json()["workers"]
    assert [(w["workerId"], w["connected"]) for w in workers] == [(worker_id, False)]


def test_studio_revoke_of_an_unknown_worker_is_one_error_line(
    tmp_path: Path, auto_approving_studio: str
) -> None:
    done = cli(tmp_path, "studio", "revoke", "w-nope", "--studio", auto_approving_studio)
    line = assert_one_error(done, ExitCode.FAILED)
    assert line == "error: studio revoke failed: 404 Not Found — unknown worker w-nope"
    assert done.stdout == ""


def test_studio_revoke_without_a_studio_is_one_error_line(tmp_path: Path) -> None:
    done = cli(tmp_path, "studio", "revoke", "w-1", "--studio", CLOSED_STUDIO)
    line = assert_one_error(done, ExitCode.FAILED)
    assert "studio revoke failed: transport error:" in line
