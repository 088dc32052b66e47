"""Model file downloads against a real HTTP server on 127.0.0.1 (protocol.md §9.4)."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.errors import ProvisionError
from engines.provision import ensure_file
from protocol.tasks import ModelFile
from tests.support.file_server import FileServer, Route, serve_files

BODY = b"a tiny pretend model"
BODY_SHA256 = "7820645b979bcfe59530fcd3b377c10e20bffed93396b8b3ffbd506f06aaacfe"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve_files() as files:
        yield files


def model_file(url: str, *, sha256: str | None = None, filename: str = "m.gguf") -> ModelFile:
    return ModelFile(role="model", url=url, filename=filename, sha256=sha256)


def test_body_fixture_digest() -> None:
    assert hashlib.sha256(BODY).hexdigest() == BODY_SHA256


def test_fresh_download_lands_atomically(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    path = ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path / "cache")
    assert path == tmp_path / "cache" / "m.gguf"
    assert path.read_bytes() == BODY
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.gguf"]  # no part, no lock
    [seen] = server.requests("/m.gguf")
    assert seen.range is None
    assert seen.user_agent is not None
    assert seen.user_agent.startswith("studio-worker/")


def test_cached_file_makes_no_request(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    first = ensure_file(model_file(url), tmp_path)
    second = ensure_file(model_file(url, sha256="0" * 64), tmp_path)  # present: not re-verified
    assert first == second
    assert len(server.requests()) == 1


def test_part_is_resumed_with_range(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.part").write_bytes(BODY[:7])  # the extension is replaced, as in Rust
    path = ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path)
    assert path.read_bytes() == BODY
    assert [s.range for s in server.requests()] == ["bytes=7-"]
    assert not (tmp_path / "m.part").exists()


def test_416_discards_part_and_restarts(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY, refuse_range=True))
    (tmp_path / "m.part").write_bytes(b"garbage")
    path = ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path)
    assert path.read_bytes() == BODY
    assert [s.range for s in server.requests()] == ["bytes=7-", None]


def test_wrong_content_range_discards_part_and_restarts(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY, content_range_start=0))
    (tmp_path / "m.part").write_bytes(b"XXXXXXX")
    path = ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path)
    assert path.read_bytes() == BODY
    assert [s.range for s in server.requests()] == ["bytes=7-", None]


def test_200_to_a_range_request_rewrites_the_part(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY, honour_range=False))
    (tmp_path / "m.part").write_bytes(b"stale bytes")
    path = ensure_file(model_file(url), tmp_path)
    assert path.read_bytes() == BODY
    assert len(server.requests()) == 1


def test_404_names_the_status_and_leaves_nothing(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.url("/missing.gguf")
    (tmp_path / "missing.part").write_bytes(b"old prefix")
    with (
        caplog.at_level(logging.WARNING, logger="engines.download"),
        pytest.raises(ProvisionError) as caught,
    ):
        ensure_file(model_file(url, filename="missing.gguf", sha256=BODY_SHA256), tmp_path)
    assert str(caught.value) == f"GET {url} -> 404 Not Found"
    assert list(tmp_path.iterdir()) == []
    [record] = caplog.records
    line = record.getMessage()
    for field in (
        "op=download",
        f"url={url}",
        f"dest={tmp_path / 'missing.gguf'}",
        "status=404",
        f"sha256={BODY_SHA256}",
        "elapsed_ms=",
    ):
        assert field in line


def test_truncated_body_is_rejected(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY, send_limit=5))
    with pytest.raises(ProvisionError) as caught:
        ensure_file(model_file(url), tmp_path)
    assert str(caught.value) == (
        "size mismatch: wrote 5 bytes but the server declared Content-Length 20 "
        "(download truncated or corrupt)"
    )
    assert list(tmp_path.iterdir()) == []


def test_short_content_length_is_caught_by_sha256(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY, declared_length=10))
    with pytest.raises(ProvisionError, match="sha256 mismatch") as caught:
        ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path)
    assert hashlib.sha256(BODY[:10]).hexdigest() in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_sha256_names_both_digests_and_leaves_nothing(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.add("/m.gguf", Route(BODY))
    expected = "ab" * 32
    with pytest.raises(ProvisionError) as caught:
        ensure_file(model_file(url, sha256=expected), tmp_path)
    assert str(caught.value) == (
        f"sha256 mismatch: downloaded body hashes to {BODY_SHA256} but the registry expects "
        f"{expected} (corrupted or tampered download)"
    )
    assert list(tmp_path.iterdir()) == []


def test_sha256_is_case_insensitive_and_trimmed(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    path = ensure_file(model_file(url, sha256=f"  {BODY_SHA256.upper()}\n"), tmp_path)
    assert path.read_bytes() == BODY


def test_resumed_prefix_is_part_of_the_hash(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.part").write_bytes(b"XXXXXXX")  # wrong prefix, server continues at 7
    with pytest.raises(ProvisionError, match="sha256 mismatch"):
        ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    ["http://example.com/m.gguf", "ftp://127.0.0.1/m.gguf", "file:///etc/passwd"],
)
def test_non_https_url_is_refused_before_any_request(url: str, tmp_path: Path) -> None:
    with pytest.raises(ProvisionError) as caught:
        ensure_file(model_file(url), tmp_path / "cache")
    assert str(caught.value) == (
        f"model file URL must use https (loopback http is allowed for tests/mirrors): {url}"
    )
    assert not (tmp_path / "cache").exists()


def test_every_redirect_hop_passes_the_gate(server: FileServer, tmp_path: Path) -> None:
    target = "http://example.invalid/m.gguf"
    url = server.add("/m.gguf", Route(redirect_to=target))
    with pytest.raises(ProvisionError) as caught:
        ensure_file(model_file(url), tmp_path)
    assert str(caught.value) == (
        f"model file URL must use https (loopback http is allowed for tests/mirrors): {target}"
    )
    assert list(tmp_path.iterdir()) == []


def test_loopback_redirect_is_followed(server: FileServer, tmp_path: Path) -> None:
    real = server.add("/real.gguf", Route(BODY))
    url = server.add("/m.gguf", Route(redirect_to=real))
    path = ensure_file(model_file(url, sha256=BODY_SHA256), tmp_path)
    assert path.read_bytes() == BODY
    assert [s.path for s in server.requests()] == ["/m.gguf", "/real.gguf"]


def test_connection_refused_is_a_provision_error(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.gguf"
    with pytest.raises(ProvisionError, match=f"GET {url} failed: ConnectError"):
        ensure_file(model_file(url), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cancelled_download_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProvisionError, match="cancelled"):
        ensure_file(model_file(url), tmp_path, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_progress_is_monotonic_and_ends_at_total(server: FileServer, tmp_path: Path) -> None:
    body = bytes(range(256)) * 16 * 1024  # 4 MiB: many chunks
    url = server.add("/big.gguf", Route(body))
    calls: list[tuple[int, int]] = []
    ensure_file(
        model_file(url, filename="big.gguf"),
        tmp_path,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (len(body), len(body))
    assert all(total == len(body) for _, total in calls)
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)


def test_progress_counts_the_resumed_prefix(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.part").write_bytes(BODY[:7])
    calls: list[tuple[int, int]] = []
    ensure_file(model_file(url), tmp_path, on_progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (7, len(BODY))
    assert calls[-1] == (len(BODY), len(BODY))
