"""A real HTTP server on 127.0.0.1 that plays the studio's HTTP side for the tests.

Each (method, path) gets a script of replies, answered in order; the last one repeats.
Every request is recorded (method, path, headers, body) before it is answered, so a test
that awaited the response can read it without waiting. An unscripted route answers 501.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVE_POLL_INTERVAL_S = 0.02


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = b""
    """bytes or str sent as-is; anything else is sent as JSON."""


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Part:
    name: str | None
    filename: str | None
    content_type: str | None  # None when the part has no Content-Type header
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body, in wire order."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert message.is_multipart(), "not a multipart body"
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append(
            Part(
                name=part.get_param("name", header="content-disposition"),  # type: ignore[arg-type]
                filename=part.get_filename(),
                content_type=part.get("Content-Type"),
                data=payload,
            )
        )
    return parts


class FakeStudio:
    def __init__(self) -> None:
        self._scripts: dict[tuple[str, str], list[Reply]] = {}
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def script(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts.setdefault((method, path), []).extend(replies)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def answer(self, request: Received) -> Reply:
        with self._lock:
            self._received.append(request)
            script = self._scripts.get((request.method, request.path))
            if not script:
                return Reply(501, f"no scripted reply for {request.method} {request.path}")
            return script.pop(0) if len(script) > 1 else script[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = Received(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length),
        )
        reply = self.server.studio.answer(request)
        if isinstance(reply.body, bytes):
            payload = reply.body
        elif isinstance(reply.body, str):
            payload = reply.body.encode()
        else:
            payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, studio: FakeStudio) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.studio = studio

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-reply (a cancelled test request) is not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def running_studio() -> Iterator[FakeStudio]:
    """A FakeStudio listening on a free port; shut down and closed on exit."""
    studio = FakeStudio()
    server = _Server(studio)
    studio.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, args=(SERVE_POLL_INTERVAL_S,), daemon=True
    )
    thread.start()
    try:
        yield studio
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
