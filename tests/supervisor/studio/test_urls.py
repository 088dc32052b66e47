"""protocol.md §1.1: HTTP base normalisation and the WebSocket connect URL."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from supervisor.errors import UrlError
from supervisor.studio.urls import api_url, build_connect_url, normalize_base_url

REGISTER = "/workers/register-request"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://studio.example/graphics/api/", "https://studio.example/graphics/api" + REGISTER),
        (
            "https://studio.example/custom/graphics/api",
            "https://studio.example/custom/graphics/api" + REGISTER,
        ),
        ("https://studio.minis.gg/", "https://studio.minis.gg/graphics/api" + REGISTER),
        ("http://localhost:9790", "http://localhost:9790/graphics/api" + REGISTER),
        ("http://127.0.0.1:9790/mount///", "http://127.0.0.1:9790/mount/graphics/api" + REGISTER),
        ("https://studio.example/?x=1#frag", "https://studio.example/graphics/api" + REGISTER),
        ("  https://studio.example  ", "https://studio.example/graphics/api" + REGISTER),
    ],
)
def test_api_url_never_doubles_the_prefix(base: str, expected: str) -> None:
    assert api_url(base, REGISTER) == expected


def test_normalize_strips_prefix_query_fragment_and_trailing_slash() -> None:
    assert normalize_base_url("https://studio.example/graphics/api/?a=b#c") == (
        "https://studio.example"
    )
    assert normalize_base_url("https://studio.example/custom/graphics/api") == (
        "https://studio.example/custom"
    )


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        ("not a url", "relative URL without a base"),
        ("", "relative URL without a base"),
        ("https://", "empty host"),
        ("http://exa mple.com/", "invalid character in URL"),
        ("http://studio.example:99999/", "invalid port number"),
        ("ftp://nope/", "unsupported scheme: ftp"),
        ("ws://studio.example/", "unsupported scheme: ws"),
    ],
)
def test_normalize_rejects_with_the_rust_wording(raw: str, cause: str) -> None:
    with pytest.raises(UrlError) as excinfo:
        normalize_base_url(raw)
    assert str(excinfo.value) == f'invalid api_base_url "{raw}": {cause}'
    assert isinstance(excinfo.value, ValueError)


def test_api_url_requires_a_rooted_path() -> None:
    with pytest.raises(ValueError, match="must start with"):
        api_url("https://studio.example", "workers")


@pytest.mark.parametrize(
    ("base", "worker_id", "scheme", "path"),
    [
        ("http://api.example/graphics/api", "w-1", "ws", "/graphics/api/workers/w-1/connect"),
        ("https://api.example/graphics/api/", "w-2", "wss", "/graphics/api/workers/w-2/connect"),
        ("http://localhost:9790", "w-3", "ws", "/graphics/api/workers/w-3/connect"),
        ("ws://localhost:9790/x", "w-4", "ws", "/x/graphics/api/workers/w-4/connect"),
        ("wss://studio.example/", "w-5", "wss", "/graphics/api/workers/w-5/connect"),
        ("https://studio.minis.gg/", "w/6", "wss", "/graphics/api/workers/w%2F6/connect"),
    ],
)
def test_build_connect_url(base: str, worker_id: str, scheme: str, path: str) -> None:
    url = build_connect_url(base, worker_id)
    parts = urlsplit(url)
    assert parts.scheme == scheme
    assert parts.path == path


def test_default_production_connect_url() -> None:
    assert build_connect_url("https://studio.minis.gg/", "abc") == (
        "wss://studio.minis.gg/graphics/api/workers/abc/connect"
    )


def test_connect_url_keeps_port_and_drops_query() -> None:
    assert build_connect_url("http://localhost:9790/?debug=1", "w") == (
        "ws://localhost:9790/graphics/api/workers/w/connect"
    )


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("ftp://nope/", "unsupported scheme: ftp"),
        ("not a url", "invalid base url: relative URL without a base"),
        ("http://", "invalid base url: empty host"),
    ],
)
def test_build_connect_url_errors(base: str, message: str) -> None:
    with pytest.raises(UrlError) as excinfo:
        build_connect_url(base, "w-1")
    assert str(excinfo.value) == message
