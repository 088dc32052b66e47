"""The updater's pure rules: PEP 440 ordering with pre-releases opt-in, engine pins, the
layouts that are report-only, and the verdict that combines them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from supervisor import __version__
from supervisor.config import WorkerConfig
from supervisor.errors import UpdateError
from supervisor.updates import watch
from supervisor.updates.index import Release, parse_report, pip_error
from supervisor.updates.installation import InstallFacts, refusal
from supervisor.updates.state import remember_rolled_back
from supervisor.updates.versions import engine_pins, is_newer, pins_moved, rebuild_command

LLAMA = 'llama-cpp-python==0.3.36; extra == "llama"'
SDCPP = 'stable-diffusion-cpp-python==0.4.7; extra == "sdcpp"'


@pytest.mark.parametrize(
    ("candidate", "installed", "pre", "newer"),
    [
        ("0.5.1", "0.5.0", False, True),
        ("0.5.0", "0.5.0", False, False),
        ("0.4.9", "0.5.0", False, False),
        ("0.10.0", "0.9.0", False, True),  # not a string comparison
        ("0.6.0rc1", "0.5.0", False, False),
        ("0.6.0rc1", "0.5.0", True, True),
        ("0.6.0", "0.6.0rc1", False, True),
        ("not-a-version", "0.5.0", True, False),
    ],
)
def test_pep_440_order_with_pre_releases_only_when_asked(
    candidate: str, installed: str, pre: bool, newer: bool
) -> None:
    assert is_newer(candidate, installed, prerelease=pre) is newer


def test_engine_pins_are_read_from_requires_dist_and_compared() -> None:
    assert engine_pins([LLAMA, SDCPP, "anyio>=4.4", "not a requirement ("]) == {
        "llama-cpp-python": "==0.3.36",
        "stable-diffusion-cpp-python": "==0.4.7",
    }
    assert pins_moved([LLAMA, SDCPP], [LLAMA, SDCPP, "anyio>=5"]) == []
    moved = 'llama_cpp_python==0.3.40; extra == "llama"'
    assert pins_moved([LLAMA, SDCPP], [moved, SDCPP]) == ["llama-cpp-python"]
    assert "'studio-worker[llama,sdcpp]==1.0.0'" in rebuild_command("/v/bin/python", "1.0.0")


FACTS = InstallFacts(
    prefix=Path("/srv/venv"),
    in_venv=True,
    editable_at=None,
    in_container=False,
    container_ok=False,
    writable=True,
    installed=True,
)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"editable_at": "/src/studio-worker"}, "an editable install of /src/studio-worker"),
        ({"in_container": True}, "running in a container"),
        ({"in_container": True, "container_ok": True}, None),
        ({"in_venv": False}, "not in a virtualenv"),
        ({"writable": False}, "is not writable by this user"),
        ({"installed": False}, "not installed as a package"),
    ],
)
def test_only_a_writable_non_editable_venv_outside_a_container_installs(
    changes: dict[str, object], reason: str | None
) -> None:
    found = refusal(dataclasses.replace(FACTS, **changes))  # type: ignore[arg-type]
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def _bump(version: str) -> str:
    parts = version.split("+")[0].split(".")
    return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"


def test_the_verdict_installs_only_with_self_install_on_a_layout_it_may_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    newer = Release(_bump(__version__), (LLAMA, SDCPP))
    monkeypatch.setattr(watch, "read_facts", lambda: FACTS)
    installed = [LLAMA, SDCPP]
    off = watch.judge(newer, WorkerConfig(), config, installed)
    assert (off.install, off.note) == (False, "report only (self_install = false)")
    on = WorkerConfig(self_install=True)
    assert watch.judge(newer, on, config, installed).install
    same = Release(__version__, (LLAMA, SDCPP))
    assert watch.judge(same, on, config, installed) == watch.Verdict(False, None)
    pinned = Release(newer.version, ('llama-cpp-python==9.9.9; extra == "llama"', SDCPP))
    verdict = watch.judge(pinned, on, config, installed)
    assert not verdict.install and verdict.note is not None
    assert verdict.note.startswith("update needs an engine rebuild (llama-cpp-python")
    monkeypatch.setattr(
        watch, "read_facts", lambda: InstallFacts(**{**FACTS.__dict__, "writable": False})
    )
    assert "report only: the virtualenv" in (watch.judge(newer, on, config, installed).note or "")
    monkeypatch.setattr(watch, "read_facts", lambda: FACTS)
    remember_rolled_back(config, newer.version)
    note = watch.judge(newer, on, config, installed).note
    assert note == f"{newer.version} was rolled back recently; not retried today"


def test_pip_answers_are_read_and_its_errors_kept_to_their_reason() -> None:
    report = (
        '{"install": [{"metadata": {"name": "studio_worker", "version": "0.6.0",'
        ' "requires_dist": ["anyio>=4"]}}]}'
    )
    assert parse_report(report) == Release("0.6.0", ("anyio>=4",))
    with pytest.raises(UpdateError, match="names no studio-worker release"):
        parse_report('{"install": []}')
    stderr = (
        "WARNING: Retrying...\nERROR: Could not find a version\nERROR: No matching distribution"
    )
    assert pip_error(stderr, "x") == "No matching distribution"
    assert pip_error("", "pip exited with 1") == "pip exited with 1"
