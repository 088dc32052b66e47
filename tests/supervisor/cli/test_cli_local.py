"""protocol.md §8: the local subcommands (register, config, set-threshold) and global options.

None of them touches the network; they are run through typer's CliRunner against temp
config files, plus one real subprocess for ``--help`` / ``--version``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from supervisor import __version__
from supervisor.cli.app import app
from supervisor.config import WorkerConfig, load_config, save_config
from tests.support.fake_studio import FakeStudio, running_studio

REPO_ROOT = Path(__file__).resolve().parents[3]
REGISTERED = WorkerConfig(
    api_base_url="https://studio.example/",
    worker_id="w-1",
    auth_token="tok-SECRET",
    vram_threshold_gb=7.5,
    install_id="11111111-2222-3333-4444-555555555555",
    registration_request_id="rr-1",
    registration_secret="reg-SECRET",
    engines=("sdcpp@0",),
)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="supervisor")


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    save_config(path, REGISTERED)
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every outgoing connection attempt is recorded and refused."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == []


@pytest.fixture
def studio() -> Iterator[FakeStudio]:
    with running_studio() as fake:
        yield fake


def test_register_reset_clears_the_five_registration_fields(
    cfg_path: Path, no_network: list[object]
) -> None:
    result = invoke("--config", str(cfg_path), "register", "--reset")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "local registration state cleared; run `supervisor start` to auto-register\n"
    )
    cfg = load_config(cfg_path)
    assert cfg.worker_id is None
    assert cfg.auth_token is None
    assert cfg.registration_request_id is None
    assert cfg.registration_secret is None
    assert cfg.install_id is None
    # everything else survives
    assert (cfg.api_base_url, cfg.vram_threshold_gb, cfg.engines) == (
        "https://studio.example/",
        7.5,
        ("sdcpp@0",),
    )


def test_bare_register_makes_no_network_call(
    tmp_path: Path, studio: FakeStudio, no_network: list[object]
) -> None:
    path = tmp_path / "config.toml"
    save_config(path, WorkerConfig(api_base_url=studio.base_url))
    result = invoke("--config", str(path), "register")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"saved; run `supervisor start` to auto-register against {studio.base_url}\n"
    )
    assert studio.received() == []
    assert load_config(path).api_base_url == studio.base_url


@pytest.mark.parametrize(
    "url", ["http://localhost:9790/", "https://studio.example/custom/graphics/api/"]
)
def test_register_stores_api_base_url_verbatim(
    cfg_path: Path, no_network: list[object], url: str
) -> None:
    result = invoke("--config", str(cfg_path), "register", "--api-base-url", url)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"saved; run `supervisor start` to auto-register against {url}\n"
    cfg = load_config(cfg_path)
    assert cfg.api_base_url == url
    assert cfg.worker_id == "w-1"  # no --reset: credentials kept


def test_register_with_url_and_reset(cfg_path: Path, no_network: list[object]) -> None:
    url = "http://127.0.0.1:9790"
    result = invoke("--config", str(cfg_path), "register", "--api-base-url", url, "--reset")
    assert result.exit_code == 0, result.output
    assert "local registration state cleared" in result.stdout
    cfg = load_config(cfg_path)
    assert (cfg.api_base_url, cfg.worker_id, cfg.install_id) == (url, None, None)


def test_register_refuses_an_unusable_url(cfg_path: Path) -> None:
    before = cfg_path.read_text()
    result = invoke("--config", str(cfg_path), "register", "--api-base-url", "not a url")
    assert result.exit_code == 2  # exit_codes.USAGE
    assert result.stderr == 'error: invalid api_base_url "not a url": relative URL without a base\n'
    assert cfg_path.read_text() == before


def test_set_threshold_persists(cfg_path: Path) -> None:
    result = invoke("--config", str(cfg_path), "set-threshold", "33.0")
    assert result.exit_code == 0, result.output
    assert result.stdout == "vram_threshold_gb = 33\n"
    assert load_config(cfg_path).vram_threshold_gb == 33.0
    result = invoke("--config", str(cfg_path), "set-threshold", "12.5")
    assert result.stdout == "vram_threshold_gb = 12.5\n"


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan"])
def test_set_threshold_rejects_negative(cfg_path: Path, value: str) -> None:
    before = cfg_path.read_text()
    result = invoke("--config", str(cfg_path), "set-threshold", value)
    assert result.exit_code != 0
    assert result.stderr == "error: threshold must be >= 0\n"
    assert cfg_path.read_text() == before


def test_config_prints_path_then_toml(cfg_path: Path) -> None:
    result = invoke("--config", str(cfg_path), "config")
    assert result.exit_code == 0, result.output
    first, _, rest = result.stdout.partition("\n")
    assert first == f"# {cfg_path}"
    parsed = tomllib.loads(rest)
    assert parsed["worker_id"] == "w-1"
    assert parsed["auth_token"] == "tok-SECRET"  # the operator's own file: secrets included
    assert parsed["engines"] == ["sdcpp@0"]


def test_config_option_is_used_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("--config", "rel/dir/my.toml", "config")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# rel/dir/my.toml\n")
    assert (tmp_path / "rel" / "dir" / "my.toml").is_file()


def test_default_path_without_config_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    result = invoke("set-threshold", "4")
    assert result.exit_code == 0, result.output
    path = tmp_path / "minis-studio-worker" / "config.toml"
    assert load_config(path).vram_threshold_gb == 4.0


def test_broken_config_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('auth_token = "tok-SECRET\n')
    result = invoke("--config", str(path), "config")
    assert result.exit_code == 2  # exit_codes.USAGE: a bad config file
    assert "parsing config.toml" in result.stderr
    assert "tok-SECRET" not in result.output
    assert "Traceback" not in result.output


def test_version_and_help() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"studio-worker {__version__} (cpu)\n"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("register", "config", "set-threshold", "--config", "--version"):
        assert command in result.stdout


def test_real_process_help_and_version(tmp_path: Path) -> None:
    entry = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "120"}
    done = subprocess.run(
        [*entry, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: supervisor" in done.stdout
    assert "set-threshold" in done.stdout
    done = subprocess.run(
        [*entry, "--version"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"studio-worker {__version__} (cpu)\n"
