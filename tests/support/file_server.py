"""A real HTTP file server on 127.0.0.1 for the download tests, misbehaving on request.

Each path maps to a ``Route`` that says how to answer: honour ``Range`` or not, refuse it
with 416, claim a wrong ``Content-Range``, declare a ``Content-Length`` it does not keep,
cut the body short, redirect, fail with a status, or hold the body until the test lets it
go. Every request is recorded, so tests can count them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_TIMEOUT_S = 30.0


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    honour_range: bool = True
    refuse_range: bool = False
    content_range_start: int | None = None
    declared_length: int | None = None
    send_limit: int | None = None
    redirect_to: str | None = None
    hold: threading.Event | None = None
    arrived: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Seen:
    path: str
    range: str | None
    user_agent: str | None


class FileServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def requests(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path is None or s.path == path]

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def release_all(self) -> None:
        for route in self.routes.values():
            if route.hold is not None:
                route.hold.set()


def _handler(files: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            del format, args

        def do_GET(self) -> None:
            files.record(Seen(self.path, self.headers.get("Range"), self.headers.get("User-Agent")))
            route = files.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route.arrived.set()
            if route.redirect_to is not None:
                self._empty(302, {"Location": route.redirect_to})
            elif route.status != 200:
                self._empty(route.status, {})
            else:
                self._send_body(route)

        def _send_body(self, route: Route) -> None:
            body = route.body
            status, start, headers = 200, 0, {}
            requested = self.headers.get("Range")
            if requested is not None and route.honour_range:
                match = re.fullmatch(r"bytes=(\d+)-", requested)
                assert match is not None, requested
                start = int(match.group(1))
                if route.refuse_range or start >= len(body):
                    self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                    return
                status = 206
                claimed = start if route.content_range_start is None else route.content_range_start
                headers["Content-Range"] = f"bytes {claimed}-{len(body) - 1}/{len(body)}"
            payload = body[start:]
            if route.hold is not None:
                route.hold.wait(HOLD_TIMEOUT_S)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            declared = route.declared_length
            self.send_header("Content-Length", str(len(payload) if declared is None else declared))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(payload if route.send_limit is None else payload[: route.send_limit])
            self.wfile.flush()
            self.close_connection = True

        def _empty(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True

    return Handler


@contextmanager
def serve_files() -> Iterator[FileServer]:
    """A running server on 127.0.0.1 (random port), shut down and closed on exit."""
    files = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    httpd.daemon_threads = True
    files.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield files
    finally:
        files.release_all()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
