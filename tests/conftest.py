"""Shared fixtures: asyncio is the only anyio backend (websockets and zmq.asyncio need it)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
