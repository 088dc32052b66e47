"""Shared fixtures: asyncio is the only anyio backend (websockets and zmq.asyncio need it).

Tests run in random order (pytest-randomly), so state one test leaks into the next shows
at once; the seed is printed at the end of every run, quiet or not, so any order can be
replayed (see the header of scripts/test).

Fault model ids (``synthetic-crash``, ...) act in every test and every process it starts:
``STUDIO_WORKER_FAULTS=1`` is set for the whole session (a test that needs them off deletes
it with ``monkeypatch``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.faults import FAULTS_ENV

pytest_plugins = ["tests.support.process_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def fault_models_enabled() -> Iterator[None]:
    # Session scope, so fixtures of every scope (and the processes they spawn) inherit it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULTS_ENV, "1")
        yield


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    seed = config.getoption("randomly_seed", default=None)
    if isinstance(seed, int):  # absent with -p no:randomly
        terminalreporter.write_line(
            f"random order: --randomly-seed={seed} (pass it to replay this order)"
        )
    else:
        terminalreporter.write_line("file order: pytest-randomly is off")
