"""Who may use the status page: requests must name the address it serves in ``Host``, and
writes must come from the page itself.

DNS rebinding: a web page on another site can point its own host name at 127.0.0.1 and make
the operator's browser read this endpoint as if it were that site; the ``Host`` header then
carries the attacker's name, so a page served on ``127.0.0.1:9464`` answers only requests
for the address it listens on (the listen text, the bound address), for ``localhost`` and
loopback addresses when it listens on loopback (an SSH tunnel's far end), and for any IP
address when it listens on every interface (a rebinding needs a name, never an IP). The
port is not checked: a tunnel may forward another local port to it. ``/metrics``,
``/healthz`` and ``/readyz`` keep answering whatever the ``Host``: Prometheus and probes
reach them by any name the operator chose, and they never change anything.

Cross-origin writes: a POST must carry no ``Origin`` or the page's own, and no
``Sec-Fetch-Site`` other than same-origin; the action secret is checked after that.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

UNGUARDED_PATHS: Final = frozenset({"/metrics", "/healthz", "/readyz"})
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})


def host_name(header: str) -> str:
    """The host of a ``Host`` header (``[::1]:9464`` -> ``::1``), lowercased, no port."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    name, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        text = name
    return text.rstrip(".")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class HostRule:
    """The names one listening address answers to (see the module docstring)."""

    listen_host: str  # as the operator wrote it: 127.0.0.1, localhost, ::, a name
    bound_host: str  # what the socket is bound to

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        if name in (self.listen_host.lower().rstrip("."), self.bound_host.lower()):
            return True
        bound = _ip(self.bound_host)
        asked = _ip(name)
        if bound is not None and bound.is_unspecified:
            return asked is not None or name == "localhost"
        if (bound is not None and bound.is_loopback) or self.listen_host == "localhost":
            return name == "localhost" or (asked is not None and asked.is_loopback)
        return False


def same_origin_write(headers: Headers) -> bool:
    """A write that a browser sent from this page (or a client that is no browser)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == "http" and parts.netloc.lower() == headers.get("host", "").lower()


class HostGuard:
    """ASGI middleware: refuses (403) what the rules above refuse, before any route."""

    def __init__(self, app: ASGIApp, rule: HostRule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        refusal = None
        if not self.rule.allows(host):
            refusal = (
                f"refused: Host `{host or ''}` is not the address this page is served at "
                "(open it by that address, or through an SSH tunnel to localhost)"
            )
        elif scope["method"] not in SAFE_METHODS and not same_origin_write(headers):
            refusal = "refused: a write from another origin"
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await PlainTextResponse(refusal + "\n", 403)(scope, receive, send)
