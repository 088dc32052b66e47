"""The pure rules of provisioning: URL gate, names, sanitiser, sniffing, preflight, progress."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from engines.download import content_range_start, part_path, status_text
from engines.errors import ProvisionError
from engines.file_lock import exclusive_lock
from engines.progress_bar import TerminalProgress, format_bytes, render_line
from engines.progress_throttle import ProgressThrottle
from engines.provision import (
    check_free_space,
    check_url,
    model_dir,
    plain_file_name,
    sanitise_model_id,
    sniff_image_ext,
)

# --- URL gate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://huggingface.co/org/repo/resolve/main/m.gguf",
        "HTTPS://example.com/x",
        "http://127.0.0.1:8080/m.gguf",
        "http://127.255.0.9/m.gguf",
        "http://localhost/m.gguf",
        "http://LOCALHOST:1/m.gguf",
        "http://[::1]:9000/m.gguf",
    ],
)
def test_gate_allows_https_and_loopback_http(url: str) -> None:
    check_url(url, "model file")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/m.gguf",
        "http://128.0.0.1/m.gguf",
        "http://[::2]/m.gguf",
        "http://localhost.evil.com/m.gguf",
        "http://localhost:80@evil.com/m.gguf",
        "file:///etc/passwd",
        "ftp://127.0.0.1/m.gguf",
        "javascript:alert(1)",
    ],
)
def test_gate_refuses_everything_else_naming_https(url: str) -> None:
    with pytest.raises(ProvisionError) as caught:
        check_url(url, "installer")
    assert str(caught.value) == (
        f"installer URL must use https (loopback http is allowed for tests/mirrors): {url}"
    )


@pytest.mark.parametrize(
    "raw", ["not a url", "", "https://", "http://[::1/x", "https://host:99999/x", "/rel/path"]
)
def test_gate_calls_garbage_invalid(raw: str) -> None:
    with pytest.raises(ProvisionError) as caught:
        check_url(raw, "model file")
    assert str(caught.value) == f'invalid model file URL "{raw}"'


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m.gguf", "ae.safetensors", "..hidden", "a..b", ".gguf"])
def test_plain_file_names_pass(name: str) -> None:
    assert plain_file_name(name) == name


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "a\\b", "", ".", "..", "a\0b"])
def test_path_like_names_are_refused(name: str) -> None:
    with pytest.raises(ProvisionError) as caught:
        plain_file_name(name)
    assert str(caught.value) == f'model filename must be a plain file name: "{name}"'


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("org/model:v2", "org_model_v2"),
        ("..", "_."),
        (".git", "_git"),
        ("", "_"),
        ("sd-cpp:z-image-turbo", "sd-cpp_z-image-turbo"),
        ("Plain_Name-1.0", "Plain_Name-1.0"),
        ("a\\b/../c", "a_b_.._c"),
        ("modèle", "mod_le"),
    ],
)
def test_model_ids_become_one_safe_segment(model: str, expected: str) -> None:
    assert sanitise_model_id(model) == expected


@pytest.mark.parametrize("model", ["..", "../..", "/", "a/../../b", ".", "x/./y"])
def test_sanitised_ids_never_leave_the_models_root(model: str, tmp_path: Path) -> None:
    directory = model_dir(tmp_path, model, "sdcpp")
    assert directory.parent == tmp_path
    assert directory.name not in ("", ".", "..")
    assert not directory.name.startswith(".")


def test_layout_dirs(tmp_path: Path) -> None:
    assert model_dir(tmp_path, "org/m", "sdcpp") == tmp_path / "org_m"
    assert model_dir(tmp_path, "org/m", "llama") == tmp_path / "llm"


def test_part_path_replaces_the_extension(tmp_path: Path) -> None:
    assert part_path(tmp_path / "model.gguf") == tmp_path / "model.part"
    assert part_path(tmp_path / "model") == tmp_path / "model.part"
    assert part_path(tmp_path / "model.part") == tmp_path / "model.part.part"


# --- sniffing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ext"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "png"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp"),
        (b"GIF87a\x01\x00", "gif"),
        (b"GIF89a\x01\x00", "gif"),
        (b"BM\x36\x00\x00\x00", "bmp"),
        (b"II*\x00\x08\x00\x00\x00", "tif"),
        (b"MM\x00*\x00\x00\x00\x08", "tif"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"<html>", None),
        (b"\xff\xd8", None),
        (b"", None),
    ],
)
def test_sniff_by_magic_bytes(data: bytes, ext: str | None) -> None:
    assert sniff_image_ext(data) == ext


# --- disk preflight ----------------------------------------------------------------------


def test_preflight_needs_ten_percent_headroom(tmp_path: Path) -> None:
    check_free_space("m.gguf", 100, tmp_path, free_bytes=lambda _: 110)
    with pytest.raises(ProvisionError) as caught:
        check_free_space("m.gguf", 100, tmp_path, free_bytes=lambda _: 109)
    assert str(caught.value) == (
        "not enough disk space for m.gguf: need ~110 bytes (declared 100 + 10% headroom) but "
        "only 109 bytes are free on the models filesystem — free up space or move models_root"
    )


def test_preflight_saturates_like_u64(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match=f"need ~{2**64 - 1} bytes"):
        check_free_space("m.gguf", 2**64 - 10, tmp_path, free_bytes=lambda _: 0)


@pytest.mark.parametrize("size", [None, 0, -5])
def test_preflight_skips_unknown_sizes(size: int | None, tmp_path: Path) -> None:
    check_free_space("m.gguf", size, tmp_path, free_bytes=lambda _: 0)


def test_preflight_measures_the_nearest_existing_ancestor(tmp_path: Path) -> None:
    measured: list[Path] = []

    def free(path: Path) -> int:
        measured.append(path)
        return 10**6

    check_free_space("m.gguf", 100, tmp_path / "a" / "b", free_bytes=free)
    assert measured == [tmp_path]
    assert not (tmp_path / "a").exists()


def test_preflight_skips_when_the_probe_fails(tmp_path: Path) -> None:
    def broken(path: Path) -> int:
        raise OSError("statvfs failed")

    check_free_space("m.gguf", 100, tmp_path, free_bytes=broken)


# --- HTTP helpers ------------------------------------------------------------------------


def test_status_text_matches_rust_rendering() -> None:
    assert status_text(404) == "404 Not Found"
    assert status_text(503) == "503 Service Unavailable"
    assert status_text(599) == "599"


@pytest.mark.parametrize(
    ("value", "start"),
    [
        ("bytes 7-19/20", 7),
        ("bytes 0-0/*", 0),
        ("Bytes  12-99/100", 12),
        ("bytes */20", None),
        ("items 1-2/3", None),
        ("", None),
        (None, None),
    ],
)
def test_content_range_start(value: str | None, start: int | None) -> None:
    assert content_range_start(value) == start


def test_throttle_forwards_first_spaced_and_final_updates() -> None:
    now = [0.0]
    calls: list[tuple[int, int]] = []
    throttle = ProgressThrottle(lambda d, t: calls.append((d, t)), 0.1, lambda: now[0])
    throttle.update(1, 10)
    throttle.update(2, 10)  # too soon
    now[0] = 0.1
    throttle.update(3, 10)
    now[0] = 0.15
    throttle.update(4, 10)  # too soon
    throttle.finish(10, 10)
    assert calls == [(1, 10), (3, 10), (10, 10)]


# --- lock file ---------------------------------------------------------------------------


def test_lock_file_is_removed_on_release(tmp_path: Path) -> None:
    lock = tmp_path / "m.part.lock"
    with exclusive_lock(lock):
        assert lock.exists()
    assert not lock.exists()
    with exclusive_lock(lock):  # reusable after removal
        pass
    assert list(tmp_path.iterdir()) == []


# --- progress bar ------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_in_place_and_ends_the_line_at_total() -> None:
    out = _Tty()
    bar = TerminalProgress("m.gguf", stream=out)
    bar(0, 2048)
    bar(1024, 2048)
    bar(2048, 2048)
    text = out.getvalue()
    assert text.count("\r") == 3
    assert text.endswith("\n")
    assert "m.gguf [##############--------------]  50%  1.0 KiB / 2.0 KiB" in text
    assert "100%" in text


def test_bar_is_silent_when_not_a_tty() -> None:
    out = io.StringIO()
    bar = TerminalProgress("m.gguf", stream=out)
    bar(1, 2)
    bar.file_progress("other", 2, 2)
    bar.close()
    assert not bar.enabled
    assert out.getvalue() == ""


def test_bar_starts_a_new_line_per_file() -> None:
    out = _Tty()
    bar = TerminalProgress(stream=out)
    bar.file_progress("a.gguf", 5, 0)
    bar.file_progress("b.gguf", 1, 4)
    bar.close()
    lines = out.getvalue().split("\n")
    assert lines[0].startswith("\ra.gguf 5 B")
    assert lines[1].startswith("\rb.gguf [")
    assert lines[2] == ""


def test_render_and_units() -> None:
    assert render_line("", 3 * 1024**3, 0) == "3.0 GiB"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1536 * 1024) == "1.5 MiB"
