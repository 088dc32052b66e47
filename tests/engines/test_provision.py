"""Cache layouts, one-download-per-file locking, disk preflight and input images (§9.3, §9.4)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engines import provision
from engines.errors import ProvisionError
from engines.file_lock import exclusive_lock
from engines.provision import download_input_image, ensure_file, ensure_model_files
from protocol.tasks import ModelCliDefaults, ModelFile, ModelSource
from tests.support.file_server import FileServer, Route, serve_files

BODY = b"a tiny pretend model"
BODY_SHA256 = "7820645b979bcfe59530fcd3b377c10e20bffed93396b8b3ffbd506f06aaacfe"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
WAIT_S = 30.0


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve_files() as files:
        yield files


def source(*files: ModelFile, engine: str = "sd-cpp") -> ModelSource:
    defaults = ModelCliDefaults(cfg_scale=1.0, steps=8, width=512, height=512)
    return ModelSource(engine=engine, files=list(files), cli_defaults=defaults)


def mfile(url: str, filename: str, *, role: str = "model", approx: int | None = None) -> ModelFile:
    return ModelFile(role=role, url=url, filename=filename, approx_bytes=approx)


# --- layouts ----------------------------------------------------------------------------


def test_sdcpp_files_go_to_a_per_model_dir(server: FileServer, tmp_path: Path) -> None:
    dit = server.add("/dit.gguf", Route(BODY))
    vae = server.add("/vae.safetensors", Route(b"vae"))
    got = ensure_model_files(
        source(mfile(dit, "dit.gguf", role="diffusion-model"), mfile(vae, "ae.st", role="vae")),
        "org/model:v2",
        tmp_path,
        layout="sdcpp",
    )
    assert got == {
        "diffusion-model": [tmp_path / "org_model_v2" / "dit.gguf"],
        "vae": [tmp_path / "org_model_v2" / "ae.st"],
    }


def test_sdcpp_reuses_a_legacy_flat_copy(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.gguf").write_bytes(b"old flat copy, any size")
    got = ensure_model_files(source(mfile(url, "m.gguf", approx=1)), "x", tmp_path, layout="sdcpp")
    assert got == {"model": [tmp_path / "m.gguf"]}
    assert server.requests() == []


def test_per_model_copy_wins_over_the_legacy_one(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.gguf").write_bytes(b"flat")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "m.gguf").write_bytes(b"per model")
    got = ensure_model_files(source(mfile(url, "m.gguf")), "x", tmp_path, layout="sdcpp")
    assert got == {"model": [tmp_path / "x" / "m.gguf"]}


def test_llama_reuses_a_root_copy_of_the_declared_size(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.gguf").write_bytes(BODY)
    got = ensure_model_files(
        source(mfile(url, "m.gguf", approx=len(BODY))), "m", tmp_path, layout="llama"
    )
    assert got == {"model": [tmp_path / "m.gguf"]}
    assert server.requests() == []


def test_llama_reuses_a_root_copy_when_size_is_unknown(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.gguf").write_bytes(b"whatever")
    got = ensure_model_files(source(mfile(url, "m.gguf")), "m", tmp_path, layout="llama")
    assert got == {"model": [tmp_path / "m.gguf"]}


def test_llama_downloads_when_the_root_copy_size_differs(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.add("/m.gguf", Route(BODY))
    (tmp_path / "m.gguf").write_bytes(b"a different model")
    with caplog.at_level(logging.INFO, logger="engines.provision"):
        got = ensure_model_files(
            source(mfile(url, "m.gguf", approx=len(BODY))), "m", tmp_path, layout="llama"
        )
    assert got == {"model": [tmp_path / "llm" / "m.gguf"]}
    assert (tmp_path / "llm" / "m.gguf").read_bytes() == BODY
    assert (tmp_path / "m.gguf").read_bytes() == b"a different model"
    assert "not reused" in caplog.text


def test_roles_keep_source_order_and_progress_names_the_file(
    server: FileServer, tmp_path: Path
) -> None:
    urls = [server.add(f"/{n}", Route(BODY)) for n in ("b.st", "a.st", "m.gguf")]
    calls: list[tuple[str, int, int]] = []
    got = ensure_model_files(
        source(
            mfile(urls[0], "b.st", role="lora"),
            mfile(urls[1], "a.st", role="lora"),
            mfile(urls[2], "m.gguf"),
        ),
        "m",
        tmp_path,
        layout="llama",
        on_progress=lambda name, done, total: calls.append((name, done, total)),
    )
    llm = tmp_path / "llm"
    assert got == {"lora": [llm / "b.st", llm / "a.st"], "model": [llm / "m.gguf"]}
    finals = [c for c in calls if c[1] == c[2]]
    assert finals == [(n, len(BODY), len(BODY)) for n in ("b.st", "a.st", "m.gguf")]


def test_every_entry_is_checked_before_the_first_fetch(server: FileServer, tmp_path: Path) -> None:
    good = server.add("/m.gguf", Route(BODY))
    bad_url = source(mfile(good, "m.gguf"), mfile("http://example.com/v.st", "v.st"))
    with pytest.raises(ProvisionError, match="must use https"):
        ensure_model_files(bad_url, "m", tmp_path, layout="sdcpp")
    bad_name = source(mfile(good, "m.gguf"), mfile(good, "../v.st"))
    with pytest.raises(ProvisionError, match="plain file name"):
        ensure_model_files(bad_name, "m", tmp_path, layout="sdcpp")
    assert server.requests() == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "a\\b", "", ".", ".."])
def test_traversal_names_are_refused_before_any_request(
    server: FileServer, tmp_path: Path, name: str
) -> None:
    url = server.add("/m.gguf", Route(BODY))
    with pytest.raises(ProvisionError) as caught:
        ensure_file(mfile(url, name), tmp_path / "cache")
    assert str(caught.value) == f'model filename must be a plain file name: "{name}"'
    assert server.requests() == []
    assert list(tmp_path.iterdir()) == []


# --- disk preflight ----------------------------------------------------------------------


def test_disk_preflight_refuses_a_file_that_cannot_fit(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/big.gguf", Route(BODY))
    huge = 10**18
    with pytest.raises(ProvisionError) as caught:
        ensure_file(mfile(url, "big.gguf", approx=huge), tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(
        f"not enough disk space for big.gguf: need ~{huge + huge // 10} bytes "
        f"(declared {huge} + 10% headroom) but only "
    )
    assert message.endswith(
        " bytes are free on the models filesystem — free up space or move models_root"
    )
    assert server.requests() == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --- one download per file --------------------------------------------------------------


def _signalling(real: Any, about_to_lock: Callable[[], None]) -> Any:
    """Wrap the lock so the test learns a fetcher is past its presence check."""

    @contextmanager
    def lock(path: Path) -> Iterator[None]:
        about_to_lock()
        with real(path):
            yield

    return lock


def test_two_threads_download_one_file_once(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = threading.Event()
    url = server.add("/shared.gguf", Route(BODY, hold=hold))
    file = ModelFile(role="model", url=url, filename="shared.gguf", sha256=BODY_SHA256)
    results: list[Path | BaseException] = []

    def fetch() -> None:
        try:
            results.append(ensure_file(file, tmp_path))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=fetch, name=f"fetcher-{i}") for i in range(2)]
    locking = {t.name: threading.Event() for t in threads}
    signal = _signalling(exclusive_lock, lambda: locking[threading.current_thread().name].set())
    monkeypatch.setattr(provision, "exclusive_lock", signal)
    for t in threads:
        t.start()
    try:
        assert all(e.wait(WAIT_S) for e in locking.values()), "both fetchers reach the lock"
        assert server.routes["/shared.gguf"].arrived.wait(WAIT_S)
    finally:
        hold.set()
        for t in threads:
            t.join(WAIT_S)
    assert results == [tmp_path / "shared.gguf"] * 2
    assert len(server.requests("/shared.gguf")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.gguf"]


def _fetch_in_child(url: str, dest_dir: str, about_to_lock: Any, results: Any) -> None:
    # A spawned child: the patch dies with it.
    pytest.MonkeyPatch().setattr(
        provision, "exclusive_lock", _signalling(exclusive_lock, about_to_lock.set)
    )
    file = ModelFile(role="model", url=url, filename="shared.gguf", sha256=BODY_SHA256)
    try:
        results.put(("ok", str(ensure_file(file, Path(dest_dir)))))
    except BaseException as exc:
        results.put(("error", repr(exc)))


def test_two_processes_download_one_file_once(server: FileServer, tmp_path: Path) -> None:
    hold = threading.Event()
    url = server.add("/shared.gguf", Route(BODY, hold=hold))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    locking = [ctx.Event(), ctx.Event()]
    children = [
        ctx.Process(target=_fetch_in_child, args=(url, str(tmp_path), e, results)) for e in locking
    ]
    try:
        for child in children:
            child.start()
        assert all(e.wait(60) for e in locking), "both children reach the lock"
        assert server.routes["/shared.gguf"].arrived.wait(WAIT_S)
        hold.set()
        outcomes = [results.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(WAIT_S)
            if child.is_alive():
                child.kill()
                child.join(WAIT_S)
        results.close()
        results.join_thread()
    assert outcomes == [("ok", str(tmp_path / "shared.gguf"))] * 2
    assert all(child.exitcode == 0 for child in children)
    assert len(server.requests("/shared.gguf")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.gguf"]
    assert (tmp_path / "shared.gguf").read_bytes() == BODY


# --- input images ------------------------------------------------------------------------


def test_jpeg_bytes_at_a_webp_url_get_a_jpg_path(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/assets/latest.webp?v=3", Route(JPEG))
    path = download_input_image(url, tmp_path / "tmp", "job-1-init")
    assert path == tmp_path / "tmp" / "job-1-init.jpg"
    assert path.read_bytes() == JPEG
    assert sorted(p.name for p in path.parent.iterdir()) == ["job-1-init.jpg"]


def test_png_bytes_at_a_jpg_url_get_a_png_path(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/mask.jpg", Route(PNG))
    assert download_input_image(url, tmp_path, "job-1-mask") == tmp_path / "job-1-mask.png"


def test_unknown_image_content_fails_and_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/init.png", Route(b"<html>not an image</html>"))
    with pytest.raises(ProvisionError, match="is not a JPEG, PNG, WebP, GIF, BMP or TIFF"):
        download_input_image(url, tmp_path, "job-1-init")
    assert list(tmp_path.iterdir()) == []


def test_missing_input_image_fails_the_job(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/gone.png")
    with pytest.raises(ProvisionError) as caught:
        download_input_image(url, tmp_path, "job-1-init")
    assert str(caught.value) == f"GET {url} -> 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_input_image_urls_pass_the_gate(tmp_path: Path) -> None:
    url = "http://studio.example/latest.webp"
    with pytest.raises(ProvisionError) as caught:
        download_input_image(url, tmp_path, "job-1-init")
    assert str(caught.value) == (
        f"input image URL must use https (loopback http is allowed for tests/mirrors): {url}"
    )
    with pytest.raises(ProvisionError, match="plain file name"):
        download_input_image("https://studio.example/x.png", tmp_path, "../escape")
    assert list(tmp_path.iterdir()) == []


def test_a_stale_input_part_is_not_resumed(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/init.webp", Route(JPEG))
    (tmp_path / "job-1-init.part").write_bytes(b"left from another image")
    path = download_input_image(url, tmp_path, "job-1-init")
    assert path.read_bytes() == JPEG
    assert [s.range for s in server.requests()] == [None]
