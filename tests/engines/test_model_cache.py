"""The model cache's disk budget (``models_max_gb``): a download that needs room evicts the
least recently used model files that no host holds, never a held one, and is refused with
the figures when even that would not be enough. Holders are real processes holding real
locks on real files, as engine hosts do; downloads come from a real HTTP server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath

import pytest

from engines.cache_budget import (
    GIB,
    CachedFile,
    budget_bytes,
    eviction_order,
    is_evictable,
    room_need,
)
from engines.errors import ProvisionError
from engines.file_holds import hold_file, lock_for_removal
from engines.model_cache import make_room, scan
from engines.provision import ensure_file, ensure_model_files
from engines.warm_models import WarmModels
from protocol.tasks import ModelCliDefaults, ModelFile, ModelSource
from tests.support.file_server import FileServer, Route, serve_files

REPO_ROOT = Path(__file__).resolve().parents[2]
BODY = b"a tiny pretend model"  # 20 bytes
FILE_BYTES = 100
WAIT_S = 30.0
SECOND_NS = 10**9

HOLDER = """
import sys
from pathlib import Path
from engines.file_holds import hold_file
holds = [hold_file(Path(p)) for p in sys.argv[1:]]
print("held" if all(holds) else "missing", flush=True)
sys.stdin.read()  # until the test closes it
"""

EVICTOR = """
import shutil, sys
from pathlib import Path
from engines.errors import ProvisionError
from engines.model_cache import make_room
root, declared, budget = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
try:
    make_room(root, "other.gguf", declared, budget, lambda p: shutil.disk_usage(p).free)
    print("made room")
except ProvisionError as exc:
    print(f"refused: {exc}")
"""


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve_files() as files:
        yield files


def cached(root: Path, relative: str, *, used_s: int, size: int = FILE_BYTES) -> Path:
    """A model file of ``size`` bytes last used at ``used_s`` (its access time)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"w" * size)
    os.utime(path, ns=(used_s * SECOND_NS, path.stat().st_mtime_ns))
    return path


def present(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@contextmanager
def held_by_another_process(*paths: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process holding ``paths`` as an engine host holds its model files."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, paths)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"held\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=WAIT_S)
        assert proc.stdout is not None
        proc.stdout.close()


def evict_from_another_process(root: Path, declared: int, budget: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", EVICTOR, str(root), str(declared), str(budget)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    return done.stdout.strip()


def sdcpp_source(*files: ModelFile) -> ModelSource:
    return ModelSource("sd-cpp", list(files), ModelCliDefaults(1.0, 8, 512, 512))


def model(url: str, name: str, approx: int | None = len(BODY)) -> ModelFile:
    return ModelFile(role="model", url=url, filename=name, approx_bytes=approx)


# --- the rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "evictable"),
    [
        ("llm/a.gguf", True),
        ("org_model/vae.safetensors", True),
        ("flat.gguf", True),
        ("llm/a.part", False),  # a resumable download
        ("llm/a.part.lock", False),
        ("bin/sd-cli", False),  # the Rust worker's binary
        ("llm/.hidden", False),
    ],
)
def test_only_model_files_are_evictable(relative: str, evictable: bool) -> None:
    assert is_evictable(PurePath(relative)) is evictable


def test_least_recently_used_first_ties_by_path() -> None:
    files = [
        CachedFile(Path("/m/b"), 1, 20, True),
        CachedFile(Path("/m/z"), 1, 10, True),
        CachedFile(Path("/m/a"), 1, 20, True),
        CachedFile(Path("/m/bin/x"), 1, 0, False),
    ]
    assert [f.path.name for f in eviction_order(files)] == ["z", "a", "b"]


def test_room_need_counts_budget_and_disk() -> None:
    assert room_need(budget=1000, used=800, declared=100, free_disk=None).to_free == 0
    assert room_need(budget=1000, used=950, declared=100, free_disk=None).to_free == 50
    # 10 % headroom on disk, as without a budget; the larger shortfall decides
    assert room_need(budget=1000, used=0, declared=100, free_disk=100).to_free == 10
    assert room_need(budget=1000, used=990, declared=100, free_disk=100).to_free == 90
    assert room_need(budget=0, used=10**12, declared=100, free_disk=None).to_free == 0


def test_budget_is_in_gib() -> None:
    assert budget_bytes(0) == 0
    assert budget_bytes(1.5) == 3 * GIB // 2


# --- eviction through a download ----------------------------------------------------------


def test_a_download_that_needs_room_evicts_the_lru_unheld_files_never_a_held_one(
    server: FileServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    oldest = cached(root, "a/old.gguf", used_s=1_000)
    cached(root, "b/mid.gguf", used_s=2_000)
    cached(root, "c/mid2.gguf", used_s=3_000)
    cached(root, "d/new.gguf", used_s=4_000)
    url = server.add("/m.gguf", Route(BODY))
    # 400 in use + 20 declared within 300: 120 bytes must go, and the oldest is held.
    with held_by_another_process(oldest):
        got = ensure_model_files(
            sdcpp_source(model(url, "m.gguf")), "x", root, layout="sdcpp", budget_bytes=300
        )
    assert got == {"model": [root / "x" / "m.gguf"]}
    assert present(root) == ["a/old.gguf", "d/new.gguf", "x/m.gguf"]


def test_not_enough_room_even_after_eviction_is_a_clear_error_that_deletes_nothing(
    server: FileServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    held = cached(root, "a/old.gguf", used_s=1_000)
    cached(root, "b/free.gguf", used_s=2_000)
    url = server.add("/m.gguf", Route(BODY))
    with held_by_another_process(held), pytest.raises(ProvisionError) as caught:
        ensure_model_files(
            sdcpp_source(model(url, "m.gguf", approx=150)),
            "x",
            root,
            layout="sdcpp",
            budget_bytes=200,
        )
    assert str(caught.value).startswith(
        "not enough room for m.gguf: 150 bytes must be freed first (declared 150 bytes; "
        "models_root holds 200 bytes of its 200-byte budget, models_max_gb; "
    )
    assert str(caught.value).endswith(
        "but the model files no engine host holds come to only 100 bytes — raise "
        "models_max_gb, free up space or move models_root"
    )
    assert present(root) == ["a/old.gguf", "b/free.gguf"]
    assert server.requests() == []


def test_a_file_larger_than_the_whole_budget_is_refused(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", Route(BODY))
    with pytest.raises(ProvisionError, match="more than the whole model cache budget"):
        ensure_file(model(url, "m.gguf", approx=500), tmp_path / "x", budget_bytes=499)
    assert server.requests() == []


def test_a_host_that_died_holds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "models"
    path = cached(root, "a/m.gguf", used_s=1_000)
    with held_by_another_process(path) as holder:
        assert lock_for_removal(path) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=WAIT_S)
        make_room(root, "n.gguf", 50, 120, lambda _: 10**12)
    assert present(root) == []


def test_short_disk_is_made_good_by_eviction(tmp_path: Path) -> None:
    root = tmp_path / "models"
    cached(root, "a/old.gguf", used_s=1_000)
    cached(root, "b/new.gguf", used_s=2_000)
    # Well within the budget, but the disk lacks 110 - 50 = 60 bytes: one file goes.
    make_room(root, "n.gguf", 100, 10**9, lambda _: 50)
    assert present(root) == ["b/new.gguf"]


def test_without_a_budget_nothing_is_ever_evicted(server: FileServer, tmp_path: Path) -> None:
    root = tmp_path / "models"
    cached(root, "a/old.gguf", used_s=1_000, size=10_000)
    url = server.add("/m.gguf", Route(BODY))
    ensure_model_files(sdcpp_source(model(url, "m.gguf")), "x", root, layout="sdcpp")
    assert present(root) == ["a/old.gguf", "x/m.gguf"]


def test_partial_downloads_locks_and_binaries_count_but_stay(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name in ("x/m.part", "x/m.part.lock", "bin/sd-cli", "x/.keep"):
        cached(root, name, used_s=1)
    model_file = cached(root, "y/m.gguf", used_s=2)
    assert sum(f.size for f in scan(root)) == 5 * FILE_BYTES
    with pytest.raises(ProvisionError, match="come to only 100 bytes"):
        make_room(root, "n.gguf", 100, 450, lambda _: 10**12)
    make_room(root, "n.gguf", 100, 500, lambda _: 10**12)  # 500 + 100 - 500: the model goes
    assert not model_file.exists()
    assert present(root) == ["bin/sd-cli", "x/.keep", "x/m.part", "x/m.part.lock"]


def test_an_undeclared_size_is_trimmed_to_the_budget_after_the_download(
    server: FileServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    cached(root, "a/old.gguf", used_s=1_000, size=15)
    cached(root, "b/new.gguf", used_s=2_000, size=15)
    url = server.add("/m.gguf", Route(BODY))
    ensure_model_files(
        sdcpp_source(model(url, "m.gguf", approx=None)),
        "x",
        root,
        layout="sdcpp",
        budget_bytes=40,
    )
    assert present(root) == ["b/new.gguf", "x/m.gguf"]  # 35 bytes: the new file stayed


# --- use times and holds -------------------------------------------------------------------


def test_a_cache_hit_is_a_use_and_leaves_the_modification_time(
    server: FileServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    reused = cached(root, "x/m.gguf", used_s=1_000)
    other = cached(root, "y/other.gguf", used_s=2_000)
    mtime = reused.stat().st_mtime_ns
    url = server.add("/m.gguf", Route(BODY))
    ensure_model_files(sdcpp_source(model(url, "m.gguf")), "x", root, layout="sdcpp")
    assert server.requests() == []
    assert reused.stat().st_mtime_ns == mtime  # a warm model is not reloaded for it
    assert reused.stat().st_atime_ns > other.stat().st_atime_ns
    ensure_model_files(sdcpp_source(), "z", root, layout="sdcpp")  # let go of the job's file
    make_room(root, "n.gguf", 50, 200, lambda _: 10**12)
    assert present(root) == ["x/m.gguf"]  # the older use went first


def test_a_jobs_files_stay_held_until_the_hosts_next_provisioning(
    server: FileServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    url = server.add("/m.gguf", Route(BODY))
    ensure_model_files(sdcpp_source(model(url, "m.gguf")), "a", root, layout="sdcpp")
    # Another host needs every byte: this job's file is held.
    assert evict_from_another_process(root, 10, 25).startswith("refused: not enough room")
    assert present(root) == ["a/m.gguf"]
    ensure_model_files(sdcpp_source(), "b", root, layout="sdcpp")  # the next job
    assert evict_from_another_process(root, 10, 25) == "made room"
    assert present(root) == []


def test_warm_models_hold_their_files_until_they_go(tmp_path: Path) -> None:
    files = [cached(tmp_path, "m/a.gguf", used_s=1), cached(tmp_path, "m/b.gguf", used_s=1)]
    freed: list[str] = []
    warm: WarmModels[str] = WarmModels(lambda key, _model: freed.append(key))
    warm.add("k", "model", 200, files=files)
    assert [lock_for_removal(path) for path in files] == [None, None]
    assert warm.make_room(1) == ["k"]
    assert freed == ["k"]
    locks = [lock_for_removal(path) for path in files]
    assert all(lock is not None for lock in locks)
    for lock in locks:
        assert lock is not None
        lock.release()


def test_holds_and_removal_locks_exclude_each_other(tmp_path: Path) -> None:
    path = cached(tmp_path, "m.gguf", used_s=1)
    hold = hold_file(path)
    assert hold is not None
    assert lock_for_removal(path) is None  # even in the holder's own process
    hold.release()
    hold.release()  # idempotent
    lock = lock_for_removal(path)
    assert lock is not None
    path.unlink()  # evicted, and a new file arrives at the same path
    path.write_bytes(b"another file at the same path")
    lock.release()
    renewed = hold_file(path)
    assert renewed is not None and renewed.held
    renewed.release()
    assert hold_file(tmp_path / "missing.gguf") is None
    assert lock_for_removal(tmp_path / "missing.gguf") is None
