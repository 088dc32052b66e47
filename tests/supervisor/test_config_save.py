"""Saving the operator's config.toml: only the keys that changed are written, every other
byte (comments, order, spelling, unknown and legacy keys) stays; a file holding a secret is
made owner-only at start; the Rust worker's legacy ``engines`` value loads with a warning."""

from __future__ import annotations

import logging
import socket
import stat
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from supervisor.cli import commands
from supervisor.config import WorkerConfig, load_config, save_config, secure_config
from supervisor.exit_codes import ExitCode
from supervisor.live_config import LiveConfig
from supervisor.studio.http import StudioHttp
from supervisor.studio.registration import Approved, Pending, Registrar
from tests.supervisor.cli.test_cli_errors import sandbox_env
from tests.supervisor.studio.test_registration import (
    APPROVED,
    REGISTER,
    TOKEN,
    accepted,
    capabilities_for,
    poll_path,
)
from tests.support.fake_studio import FakeStudio, running_studio
from tests.support.supervisor_harness import write_config

CLI = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]
SECRET = "tok-SECRET-kept-out-of-logs"
OPERATOR_FILE = """\
# studio-worker config, hand-edited: keep these notes
api_base_url = "https://studio.example/"   # the team's studio

vram_threshold_gb = 8  # the small card
auto_start = false
label = "desk"            # a Rust worker's legacy key
engines = ["synthetic"]
future_key = { a = 1 }

[ui]  # a table the Rust tray app may add
theme = "dark"
"""


def with_keys(lines: str, text: str = OPERATOR_FILE) -> str:
    """``text`` with ``lines`` after its last top-level key (not inside ``[ui]``)."""
    head, tail = text.split("\n\n[ui]")
    return f"{head}\n{lines}\n[ui]{tail}"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def operator_file(tmp_path: Path, text: str = OPERATOR_FILE) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        for secret in secrets:
            assert secret not in text, record.getMessage()


# --- only what changed is written ----------------------------------------------------------


def test_set_threshold_rewrites_one_value_and_keeps_everything_else(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    path.chmod(0o644)
    assert commands.set_threshold(path, 33.5) == "vram_threshold_gb = 33.5"
    expected = OPERATOR_FILE.replace(
        "vram_threshold_gb = 8  # the small card", "vram_threshold_gb = 33.5  # the small card"
    )
    assert path.read_text() == expected
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]  # no temp litter


def test_a_save_that_changes_nothing_keeps_the_file_byte_for_byte(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    save_config(path, load_config(path))
    assert path.read_text() == OPERATOR_FILE


def test_new_keys_go_after_the_top_level_keys_and_cleared_ones_leave(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    cfg = load_config(path)
    save_config(path, cfg.replace(worker_id="w-9", auth_token=SECRET))
    text = path.read_text()
    # Every operator line in place, the new keys after the last top-level one.
    assert text == with_keys(f'worker_id = "w-9"\nauth_token = "{SECRET}"\n')
    assert tomllib.loads(text)["ui"] == {"theme": "dark"}  # the keys are not in the table

    commands.register(path, reset=True)
    assert path.read_text() == OPERATOR_FILE


def test_saving_against_what_was_loaded_keeps_the_operators_later_edit(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    loaded = load_config(path)
    # The operator edits another key while the worker holds `loaded`.
    path.write_text(OPERATOR_FILE.replace("auto_start = false", "auto_start = true"))
    save_config(path, loaded.replace(vram_threshold_gb=4.0), previous=loaded)
    on_disk = load_config(path)
    assert (on_disk.auto_start, on_disk.vram_threshold_gb) == (True, 4.0)


def test_live_update_writes_only_its_own_key(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    live = LiveConfig(path)
    live.update(vram_threshold_gb=2.0)
    assert path.read_text() == OPERATOR_FILE.replace("= 8  #", "= 2.0  #")


def test_a_home_relative_models_root_is_not_rewritten_expanded(tmp_path: Path) -> None:
    before = OPERATOR_FILE.replace("auto_start = false\n", "auto_start = false\nroot = 1\n")
    before = before.replace("root = 1", 'models_root = "~/m"')
    path = operator_file(tmp_path, before)
    commands.set_threshold(path, 1.0)
    assert 'models_root = "~/m"' in path.read_text()
    assert path.read_text() == before.replace("= 8  #", "= 1.0  #")


def test_a_file_that_is_not_valid_toml_is_rewritten_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = operator_file(tmp_path, f'auth_token = "{SECRET}\n')  # unterminated
    with caplog.at_level(logging.DEBUG):
        save_config(path, WorkerConfig(worker_id="w-1", auth_token=SECRET))
    assert load_config(path).auth_token == SECRET
    assert "rewriting it whole" in caplog.text
    assert_no_secret_logged(caplog, SECRET)
    assert mode_of(path) == 0o600


# --- registration saves through the same path ----------------------------------------------


@pytest.fixture
def studio() -> Iterator[FakeStudio]:
    with running_studio() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[StudioHttp]:
    async with StudioHttp(retry_pause_s=0.01) as client:
        yield client


@pytest.mark.anyio
async def test_registration_keeps_the_operators_file(
    tmp_path: Path, studio: FakeStudio, http: StudioHttp
) -> None:
    text = OPERATOR_FILE.replace("https://studio.example/", studio.base_url)
    path = operator_file(tmp_path, text)
    registrar = Registrar(path, load_config(path), http, capabilities_for)
    studio.script("POST", REGISTER, accepted("rr-1"))
    studio.script("GET", poll_path("rr-1"), APPROVED)
    with anyio.fail_after(10):
        assert isinstance(await registrar.tick(), Pending)
        assert await registrar.tick() == Approved("w-real-42")
    written = path.read_text()
    head, tail = text.split("\n\n[ui]")
    assert written.startswith(head + "\n")
    assert written.endswith("\n\n[ui]" + tail)
    on_disk = tomllib.loads(written)
    assert (on_disk["worker_id"], on_disk["auth_token"]) == ("w-real-42", TOKEN)
    assert "registration_request_id" not in on_disk  # cleared on approval: the key left
    assert on_disk["label"] == "desk"
    assert mode_of(path) == 0o600


# --- the Rust worker's legacy `engines` ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [('"multi"', "string"), ("2", "integer"), ("[1, 2]", "array"), ("{ x = 1 }", "table")],
)
def test_a_legacy_engines_value_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, value: str, kind: str
) -> None:
    text = OPERATOR_FILE.replace('engines = ["synthetic"]', f"engines = {value}")
    path = operator_file(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="supervisor.config"):
        cfg = load_config(path)
    assert cfg.engines == ("synthetic",)
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"ignoring `engines` (a {kind}) in {path}" in warning
    assert value not in warning.replace(str(path), "")  # the kind, never the value
    commands.set_threshold(path, 3.0)  # a save keeps it for the Rust worker
    assert f"engines = {value}\n" in path.read_text()


def test_engines_lists_still_read(tmp_path: Path) -> None:
    text = OPERATOR_FILE.replace('["synthetic"]', '["sdcpp@0", "llama@1"]')
    assert load_config(operator_file(tmp_path, text)).engines == ("sdcpp@0", "llama@1")


# --- a file holding a secret is made owner-only ----------------------------------------------


def test_secure_config_sets_0600_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = operator_file(tmp_path, with_keys(f'auth_token = "{SECRET}"\n'))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="supervisor.config"):
        secure_config(path, load_config(path))
    assert mode_of(path) == 0o600
    assert f"{path} holds credentials but was readable by group or others (mode 0644)" in (
        caplog.text
    )
    assert_no_secret_logged(caplog, SECRET)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_any_group_or_other_bit_counts(tmp_path: Path, mode: int) -> None:
    path = operator_file(tmp_path, with_keys('registration_secret = "x"\n'))
    path.chmod(mode)
    secure_config(path, load_config(path))
    assert mode_of(path) == 0o600


def test_a_file_without_secrets_keeps_its_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = operator_file(tmp_path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        secure_config(path, load_config(path))
    assert mode_of(path) == 0o644
    assert caplog.records == []


def test_a_failed_chmod_says_what_to_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root here every chmod succeeds: the refusal (a file of another owner) is simulated.
    path = operator_file(tmp_path, with_keys(f'auth_token = "{SECRET}"\n'))
    path.chmod(0o644)

    def refuse(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "chmod", refuse)
    with caplog.at_level(logging.WARNING, logger="supervisor.config"):
        secure_config(path, load_config(path))
    assert "setting it to 0600 failed: Operation not permitted; run `chmod 600" in caplog.text
    assert_no_secret_logged(caplog, SECRET)


def test_the_running_worker_secures_a_file_it_rereads(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    live = LiveConfig(path)
    path.write_text(with_keys(f'auth_token = "{SECRET}"\n'))  # a copy over it, 0644
    path.chmod(0o644)
    assert live.current().auth_token == SECRET
    assert mode_of(path) == 0o600


def test_start_warns_and_sets_0600(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "config.toml"
    write_config(config, "http://127.0.0.1:9/")
    config.chmod(0o644)
    with socket.socket() as taken:  # `start` stops early, after its config checks, on this
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*CLI, "--config", str(config), "start", "--metrics", f"127.0.0.1:{port}"],
            env=sandbox_env(tmp_path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"{config} holds credentials but was readable by group or others" in done.stderr
    assert mode_of(config) == 0o600
