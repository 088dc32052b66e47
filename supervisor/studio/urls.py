"""Studio URLs built from the configured base URL, exactly as protocol.md §1.1 says.

The HTTP side (``normalize_base_url``, ``api_url``) and the WebSocket side
(``build_connect_url``) accept a base with or without the ``/graphics/api`` prefix and with
an outer mount path, and never add the prefix twice. Pure string work: no I/O.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from protocol.studio import API_PREFIX
from supervisor.errors import UrlError

_HTTP_SCHEMES: Final = ("http", "https")
_WS_SCHEME_FOR: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def _parse(raw: str) -> SplitResult:
    """Split an absolute URL or raise ValueError with a cause worded like the url crate's."""
    text = raw.strip()
    parts = urlsplit(text)  # raises ValueError for e.g. an unbalanced IPv6 bracket
    if not parts.scheme:
        raise ValueError("relative URL without a base")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        raise ValueError("invalid character in URL")
    if parts.scheme in _WS_SCHEME_FOR and not parts.hostname:
        raise ValueError("empty host")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError("invalid port number") from None
    return parts


def path_segment(value: str) -> str:
    """One path segment (an id) percent-encoded so it can never add a ``/``."""
    return quote(value, safe="")


def normalize_base_url(raw: str) -> str:
    """The HTTP base every request URL starts with, without query, fragment or ``/graphics/api``.

    ``https://studio.example/graphics/api/`` -> ``https://studio.example``;
    ``https://studio.example/custom/graphics/api`` -> ``https://studio.example/custom``.
    Raises UrlError ``invalid api_base_url "<raw>": <cause>``.
    """
    try:
        parts = _parse(raw)
    except ValueError as exc:
        raise UrlError(f'invalid api_base_url "{raw}": {exc}') from None
    if parts.scheme not in _HTTP_SCHEMES:
        raise UrlError(f'invalid api_base_url "{raw}": unsupported scheme: {parts.scheme}')
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path.removesuffix(API_PREFIX)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def api_url(base: str, path: str) -> str:
    """``<normalised base>/graphics/api<path>``; ``path`` starts with ``/``."""
    if not path.startswith("/"):
        raise ValueError(f"api path must start with '/': {path!r}")
    return f"{normalize_base_url(base)}{API_PREFIX}{path}"


def build_connect_url(base: str, worker_id: str) -> str:
    """The WebSocket URL ``<ws base>/graphics/api/workers/<worker_id>/connect``.

    ``http`` -> ``ws``, ``https`` -> ``wss``, ``ws``/``wss`` kept; query and fragment are
    dropped. Raises UrlError ``invalid base url: <cause>`` or ``unsupported scheme: <s>``.
    """
    try:
        parts = _parse(base)
    except ValueError as exc:
        raise UrlError(f"invalid base url: {exc}") from None
    scheme = _WS_SCHEME_FOR.get(parts.scheme)
    if scheme is None:
        raise UrlError(f"unsupported scheme: {parts.scheme}")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PREFIX):
        path += API_PREFIX
    path += f"/workers/{path_segment(worker_id)}/connect"
    return urlunsplit((scheme, parts.netloc, path, "", ""))
