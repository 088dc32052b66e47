"""Fixtures for tests that run real processes (a pytest plugin, loaded by tests/conftest.py).

``processes`` kills and reaps whatever a test starts; ``studio`` is a local studio process
on a free port with auto-approval. A module that needs another kind of ``studio`` (a fake
one answering scripted replies) defines its own, which takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.contract_harness import Processes, StudioProcess, process_registry, start_studio


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with process_registry(tmp_path) as registry:
        yield registry


@pytest.fixture
def studio(processes: Processes, tmp_path: Path) -> Iterator[StudioProcess]:
    running = start_studio(processes, tmp_path / "studio-data")
    try:
        yield running
    finally:
        running.client.close()
