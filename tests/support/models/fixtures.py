"""Fixtures that serve generated models over real HTTP, so engines fetch them through
``engines.provision`` exactly as they fetch the studio's files.

Import the fixtures into a test module (``from tests.support.models.fixtures import model_server``).
The server binds 127.0.0.1 port 0, runs in a thread, records every request path and is
shut down (and its thread joined) when the test ends.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from protocol.tasks import ModelFile


@dataclass
class ModelServer:
    """A directory served over HTTP; ``publish`` puts a file in it and describes it."""

    root: Path
    base_url: str
    requests: list[str] = field(default_factory=list)

    def publish(self, path: Path, *, name: str | None = None, role: str = "model") -> ModelFile:
        """Serve a copy of ``path`` as ``name`` and return the ModelFile an offer would carry."""
        name = name or path.name
        shutil.copyfile(path, self.root / name)
        data = (self.root / name).read_bytes()
        return ModelFile(
            role=role,
            url=f"{self.base_url}/{name}",
            filename=name,
            approx_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        del format, args  # keep test output clean


@pytest.fixture
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("served")
    served = ModelServer(root, "")
    handler = type("Handler", (_Handler,), {"requests": served.requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="model-server",
        daemon=True,
    )
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "model server thread leaked"
