"""The routes of the supervisor's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``
as they always were, and the status page: ``/`` with its static files, ``/api/state``,
``/api/logs`` and the three actions.

The page polls the two JSON endpoints (about once a second) instead of holding an event
stream open: a poll is one short request, so a shutdown never waits on a page left open,
and an SSH tunnel or proxy needs nothing special. Every JSON answer goes through the
secret mask whole. The page itself is three files read once from the package; the content
security policy lets it load nothing from anywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, TypeVar

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from supervisor.lanes.lane import Lane
from supervisor.ops.metrics import readiness
from supervisor.ops.web.actions import (
    SECRET_HEADER,
    ActionReply,
    Command,
    LaneRequest,
    PageActions,
    ThresholdRequest,
)
from supervisor.ops.web.host_guard import HostGuard, HostRule
from supervisor.ops.web.log_ring import LogRing
from supervisor.ops.web.page_data import build_page
from supervisor.ops.web.secret_mask import SecretMask
from supervisor.pool.engine_pool import EnginePool

log = logging.getLogger("supervisor.metrics")

JSON: Final = "application/json"
NO_STORE: Final = {"Cache-Control": "no-store"}
PAGE_HEADERS: Final = {
    **NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
ACTION_BODY_MAX_BYTES: Final = 1024

Endpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def _text(text: str, status: int = 200) -> PlainTextResponse:
    return PlainTextResponse(text + "\n", status, headers=NO_STORE)


@dataclass
class WebParts:
    """What the routes read and change."""

    pool: EnginePool
    lanes: list[Lane]
    registry: CollectorRegistry
    logs: LogRing
    mask: SecretMask
    config_path: Path | None
    actions: PageActions | None  # None: the page is read-only (no config to write)


def _static(name: str, content_type: str) -> Endpoint:
    body = resources.files("supervisor.ops.web").joinpath("static", name).read_bytes()

    async def serve(request: Request) -> Response:
        return Response(body, headers=PAGE_HEADERS, media_type=content_type)

    return serve


class Routes:
    def __init__(self, parts: WebParts) -> None:
        self.parts = parts

    def _json(self, value: object, status: int = 200) -> Response:
        body = self.parts.mask.scrub(msgspec.json.encode(value))
        return Response(body, status, headers=NO_STORE, media_type=JSON)

    async def metrics(self, request: Request) -> Response:
        body = generate_latest(self.parts.registry)
        return Response(body, headers=NO_STORE, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    async def healthz(self, request: Request) -> Response:
        return _text("ok")

    async def readyz(self, request: Request) -> Response:
        ready, reason = readiness(self.parts.pool, self.parts.lanes)
        return _text(reason, 200 if ready else 503)

    async def state(self, request: Request) -> Response:
        p = self.parts
        secret = p.actions.secret.path if p.actions is not None else None
        return self._json(build_page(p.pool, p.lanes, p.config_path, secret))

    async def logs(self, request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return _text("bad `after`: a line number", 400)
        level = LEVELS.get(request.query_params.get("level", "debug"))
        if level is None:
            return _text(f"bad `level`: one of {', '.join(LEVELS)}", 400)
        return self._json({"lines": self.parts.logs.since(after, level)})

    async def _authorised(self, request: Request) -> PageActions | Response:
        actions = self.parts.actions
        if actions is None:
            return self._json(ActionReply(False, "this page is read-only"), 403)
        if not actions.secret.matches(request.headers.get(SECRET_HEADER)):
            client = request.client.host if request.client else "?"
            log.warning(
                "status page action %s refused: no valid secret (from %s)", request.url.path, client
            )
            where = actions.secret.path
            text = f"this needs the page's action secret (the file {where})"
            return self._json(ActionReply(False, text), 403)
        return actions

    async def check(self, request: Request) -> Response:
        """Whether the secret the page was given is the right one (no change made)."""
        allowed = await self._authorised(request)
        if isinstance(allowed, Response):
            return allowed
        return self._json(ActionReply(True, "actions unlocked"))

    async def _decode(self, request: Request, kind: type[T]) -> T | Response:
        body = await request.body()
        if len(body) > ACTION_BODY_MAX_BYTES:
            return self._json(ActionReply(False, "bad request: too large"), 413)
        try:
            return msgspec.json.decode(body or b"{}", type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return self._json(ActionReply(False, f"bad request: {exc}"), 400)

    async def pause(self, request: Request) -> Response:
        return await self._set_paused(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._set_paused(request, "resume")

    async def _set_paused(self, request: Request, cmd: Command) -> Response:
        allowed = await self._authorised(request)
        if isinstance(allowed, Response):
            return allowed
        asked = await self._decode(request, LaneRequest)
        if isinstance(asked, Response):
            return asked
        reply = allowed.set_paused(cmd, asked.lane)
        return self._json(reply, 200 if reply.ok else 400)

    async def threshold(self, request: Request) -> Response:
        allowed = await self._authorised(request)
        if isinstance(allowed, Response):
            return allowed
        asked = await self._decode(request, ThresholdRequest)
        if isinstance(asked, Response):
            return asked
        reply = await allowed.set_threshold(asked)
        return self._json(reply, 200 if reply.ok else 400)


def build_app(parts: WebParts, rule: HostRule) -> Starlette:
    r = Routes(parts)
    get = ["GET"]  # HEAD comes with it
    post = ["POST"]
    routes = [
        Route("/metrics", r.metrics, methods=get),
        Route("/healthz", r.healthz, methods=get),
        Route("/readyz", r.readyz, methods=get),
        *(Route(path, _static(*file), methods=get) for path, file in STATIC.items()),
        Route("/api/state", r.state, methods=get),
        Route("/api/logs", r.logs, methods=get),
        Route("/api/actions/check", r.check, methods=post),
        Route("/api/actions/pause", r.pause, methods=post),
        Route("/api/actions/resume", r.resume, methods=post),
        Route("/api/actions/threshold", r.threshold, methods=post),
    ]
    return Starlette(routes=routes, middleware=[Middleware(HostGuard, rule=rule)])
