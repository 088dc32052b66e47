"""Where the control socket lives, and a start-up that cannot open it."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from supervisor.errors import ControlListenError
from supervisor.exit_codes import ExitCode
from supervisor.ops.control import SOCKET_NAME, SOCKET_PATH_MAX_BYTES, socket_path


def test_a_short_config_path_keeps_the_socket_beside_it(tmp_path: Path) -> None:
    assert socket_path(tmp_path / "config.toml") == tmp_path / SOCKET_NAME


def test_a_long_config_path_gets_a_private_socket_named_after_its_directory(
    tmp_path: Path,
) -> None:
    one = tmp_path / ("x" * SOCKET_PATH_MAX_BYTES) / "config.toml"
    other = tmp_path / ("y" * SOCKET_PATH_MAX_BYTES) / "config.toml"
    path = socket_path(one)
    assert len(os.fsencode(path)) <= SOCKET_PATH_MAX_BYTES
    assert path == socket_path(one.parent / "other-name.toml"), "one per directory"
    assert path != socket_path(other)
    assert path.parent.name == f"studio-worker-{os.getuid()}"


@pytest.mark.anyio
async def test_a_socket_that_cannot_be_opened_is_a_usage_error(tmp_path: Path) -> None:
    from supervisor.ops.control import ControlServer

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    server = ControlServer(blocker / SOCKET_NAME, pool=None, lanes=None)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:  # as runtime.py starts it
        with pytest.raises(ControlListenError) as caught:
            await tg.start(server.serve)
    assert f"cannot open the control socket {blocker / SOCKET_NAME}" in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE
