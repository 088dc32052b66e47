"""A real HTTP server on 127.0.0.1 that plays Sentry's ingest endpoint for the telemetry
tests: it accepts envelopes (``POST /api/<project>/envelope/``), undoes the SDK's
compression, and keeps the decoded bytes and the events in them. ``delay_s`` makes it a
slow endpoint (each request is answered that late)."""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PUBLIC_KEY = "0123456789abcdef0123456789abcdef"
PROJECT = "42"


def decode_body(raw: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only when the SDK found it

        return bytes(brotli.decompress(raw))
    return raw


def envelope_items(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """(item header, payload) pairs of one envelope (its first line is its own header)."""
    pos = body.find(b"\n") + 1
    items = []
    while 0 < pos < len(body):
        end = body.find(b"\n", pos)
        end = len(body) if end < 0 else end
        if not body[pos:end].strip():
            pos = end + 1
            continue
        header = json.loads(body[pos:end])
        start = end + 1
        length = header.get("length")
        if length is None:
            stop = body.find(b"\n", start)
            stop = len(body) if stop < 0 else stop
        else:
            stop = start + int(length)
        items.append((header, body[start:stop]))
        pos = stop + 1
    return items


@dataclass
class Ingest:
    url: str
    delay_s: float = 0.0
    bodies: list[bytes] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dsn(self) -> str:
        host = self.url.split("://", 1)[1]
        return f"http://{PUBLIC_KEY}@{host}/{PROJECT}"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            bodies = list(self.bodies)
        found = []
        for body in bodies:
            for header, payload in envelope_items(body):
                if header.get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def all_bytes(self) -> bytes:
        with self.lock:
            return b"\n".join(self.bodies)

    def wait_for_event(self, predicate: Any, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no matching event within {timeout_s} s; got {self.events()}")


@contextmanager
def sentry_ingest(delay_s: float = 0.0) -> Iterator[Ingest]:
    ingest = Ingest(url="", delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            with ingest.lock:
                ingest.requests += 1
            if ingest.delay_s:
                time.sleep(ingest.delay_s)
            body = decode_body(raw, self.headers.get("Content-Encoding", ""))
            with ingest.lock:
                ingest.bodies.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ingest.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ingest
    finally:
        server.shutdown()
        server.server_close()
