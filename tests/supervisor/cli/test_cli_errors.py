"""Every refusal of the real ``supervisor`` process is one ``error:`` line on stderr and the
exit status of supervisor/exit_codes.py, never a traceback: `start`'s checks (before any
engine host is spawned), the control commands with no supervisor, the local-studio
commands with no studio, `submit --timeout`, the service commands and bad flags."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.exit_codes import ExitCode
from tests.support.supervisor_harness import write_config

CLI = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]
CLOSED_STUDIO = "http://127.0.0.1:9"  # the discard port: nothing listens there
QUICK_S = 20.0  # generous on a loaded 2-core runner; a spawned host would log, not just wait


def sandbox_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_WORKER_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    return env


def cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env or sandbox_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_error(done: subprocess.CompletedProcess[str], code: ExitCode) -> str:
    """The process exited ``code`` with exactly one ``error: `` line on stderr; returns it."""
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    return lines[0]


def config_with(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "cfg" / "config.toml"
    write_config(path, overrides.pop("api_base_url", "http://127.0.0.1:9/"), **overrides)
    return path


# --- start: refused before any engine host is spawned --------------------------------------


@pytest.mark.parametrize(
    ("engines", "expected"),
    [
        ("synthetic@x", "bad GPU index in `synthetic@x` (--engines)"),
        ("synthetic@", "bad GPU index in `synthetic@` (--engines)"),
        ("-synthetic", "no engines selected by --engines"),
        ("onnx", "unknown engine `onnx` in --engines; choose from llama, sdcpp, synthetic"),
    ],
)
def test_start_refuses_bad_engines_flag_before_spawning(tmp_path, engines, expected):
    config = config_with(tmp_path)
    started = time.monotonic()
    done = cli(tmp_path, "--config", str(config), "start", f"--engines={engines}")
    assert time.monotonic() - started < QUICK_S
    line = assert_one_error(done, ExitCode.USAGE)
    assert expected in line
    assert "spawned engine host" not in done.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"engines": ("synthetic@x",)}, "bad GPU index in `synthetic@x` (`engines` of "),
        ({"engines": ("synthetic", "onnx@0")}, "unknown engine `onnx` in `engines` of "),
        ({"engines": ("-synthetic",)}, "no engines selected by `engines` of "),
        (
            {"api_base_url": "ftp://example.com/"},
            'invalid api_base_url "ftp://example.com/": unsupported scheme: ftp',
        ),
        ({"api_base_url": "ftp://example.com/", "worker_id": None, "auth_token": None}, "ftp"),
        ({"metrics_listen": "nonsense"}, "bad metrics listen address `nonsense`"),
    ],
)
def test_start_refuses_a_bad_config_before_spawning(tmp_path, overrides, expected):
    config = config_with(tmp_path, **overrides)
    started = time.monotonic()
    done = cli(tmp_path, "--config", str(config), "start")
    assert time.monotonic() - started < QUICK_S
    line = assert_one_error(done, ExitCode.USAGE)
    assert expected in line
    assert "spawned engine host" not in done.stderr
    if "api_base_url" in overrides:  # and it says how to fix it
        assert "supervisor register --api-base-url URL" in line


def test_start_refuses_an_unparseable_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('auth_token = "tok-SECRET\n')
    done = cli(tmp_path, "--config", str(config), "start")
    line = assert_one_error(done, ExitCode.USAGE)
    assert "parsing config.toml" in line and "tok-SECRET" not in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--log-format", "xml"], "--log-format must be one of text, json, got 'xml'"),
        (["--bogus"], "No such option: --bogus (see `supervisor start --help`)"),
        (["--local-port", "x"], "Invalid value for '--local-port'"),
    ],
)
def test_start_refuses_bad_flags(tmp_path, args, expected):
    done = cli(tmp_path, "--config", str(config_with(tmp_path)), "start", *args)
    assert expected in assert_one_error(done, ExitCode.USAGE)
    assert "spawned engine host" not in done.stderr


# --- the other commands ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "pause", "resume"])
def test_control_commands_without_a_supervisor(tmp_path, command):
    config = config_with(tmp_path)
    done = cli(tmp_path, "--config", str(config), command)
    line = assert_one_error(done, ExitCode.FAILED)
    assert "no supervisor is running for this config" in line
    assert "supervisor start" in line  # what to do
    if command == "status":  # the config lines are still printed
        assert "registration:       approved as w-1" in done.stdout
        assert "supervisor:         not running" in done.stdout


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (
            ["register", "--api-base-url", "ftp://x"],
            ExitCode.USAGE,
            'invalid api_base_url "ftp://x": unsupported scheme: ftp',
        ),
        (["set-threshold", "-1"], ExitCode.USAGE, "threshold must be >= 0"),
        (["set-threshold", "abc"], ExitCode.USAGE, "Invalid value for 'GB'"),
        (["config"], ExitCode.USAGE, "parsing config.toml"),
    ],
)
def test_local_config_commands(tmp_path, args, code, expected):
    config = tmp_path / "config.toml"
    config.write_text('api_base_url = "x"\nvram_threshold_gb = "many"\nauto_start = true\n')
    if args[0] != "config":
        config = config_with(tmp_path)
    done = cli(tmp_path, "--config", str(config), *args)
    assert expected in assert_one_error(done, code)


def test_config_that_cannot_be_read(tmp_path):
    unreadable = tmp_path / "a-directory"
    unreadable.mkdir()
    done = cli(tmp_path, "--config", str(unreadable), "config")
    line = assert_one_error(done, ExitCode.USAGE)
    assert f"reading config.toml ({unreadable})" in line


@pytest.mark.parametrize(
    "args",
    [
        ["studio", "pending"],
        ["studio", "approve", "rr-1"],
        ["studio", "reject", "rr-1", "--reason", "no"],
        ["studio", "jobs"],
        ["submit", "--prompt", "a fox"],
    ],
)
def test_local_studio_commands_without_a_studio(tmp_path, args):
    done = cli(tmp_path, *args, "--studio", CLOSED_STUDIO)
    line = assert_one_error(done, ExitCode.FAILED)
    assert "transport error" in line
    assert "`supervisor studio serve`" in line  # what to do


def test_local_studio_commands_refuse_a_bad_studio_url(tmp_path):
    done = cli(tmp_path, "studio", "jobs", "--studio", "ftp://example.com")
    assert 'invalid --studio "ftp://example.com"' in assert_one_error(done, ExitCode.USAGE)


@contextlib.contextmanager
def served_studio(tmp_path: Path, *extra: str) -> Iterator[str]:
    """A real local studio (`supervisor studio serve EXTRA`) on a free port; yields its URL."""
    log = (tmp_path / "studio.log").open("wb")
    data_dir = str(tmp_path / "studio")
    proc = subprocess.Popen(
        [*CLI, "studio", "serve", "--port", "0", "--data-dir", data_dir, *extra],
        env=sandbox_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the studio says where it listens
        assert line.startswith("local studio listening on "), line
        yield line.removeprefix("local studio listening on ").split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def local_studio(tmp_path: Path) -> Iterator[str]:
    """A real local studio on a free port, with no worker."""
    with served_studio(tmp_path) as url:
        yield url


def test_studio_serve_on_a_taken_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = cli(tmp_path, "studio", "serve", "--port", str(port), "--data-dir", str(tmp_path))
    # A server: its log (here uvicorn's bind error) shares stderr, so the error line is last.
    assert "Traceback" not in done.stderr
    assert done.returncode == ExitCode.USAGE
    errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert errors == [done.stderr.splitlines()[-1]]
    assert f"local studio could not listen on 127.0.0.1:{port}; pick another --port" in errors[0]


def test_submit_timeout_is_one_error_line(tmp_path, local_studio):
    done = cli(
        tmp_path, "submit", "--prompt", "a fox", "--timeout", "0.5", "--studio", local_studio
    )
    line = assert_one_error(done, ExitCode.FAILED)
    assert "still queued after 0.5 s (--timeout)" in line
    assert "`supervisor studio jobs` shows it" in line
    listed = cli(tmp_path, "studio", "jobs", "--studio", local_studio)
    assert listed.returncode == 0 and "queued" in listed.stdout


def test_submit_refuses_a_bad_timeout(tmp_path):
    done = cli(tmp_path, "submit", "--prompt", "x", "--timeout", "0", "--studio", CLOSED_STUDIO)
    assert "--timeout must be a number of seconds > 0" in assert_one_error(done, ExitCode.USAGE)


def test_submit_refuses_an_unwritable_out_before_queueing(tmp_path, local_studio):
    not_a_dir = tmp_path / "results"
    not_a_dir.write_text("a file where the results should go")
    done = cli(
        tmp_path, "submit", "--prompt", "a fox", "--out", str(not_a_dir), "--studio", local_studio
    )
    line = assert_one_error(done, ExitCode.USAGE)
    assert f"--out {not_a_dir} is not a writable directory" in line
    assert "nothing was queued" in line
    listed = cli(tmp_path, "studio", "jobs", "--studio", local_studio)
    assert listed.returncode == 0 and "no jobs" in listed.stdout


def fake_systemctl(tmp_path: Path, exit_code: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "systemctl"
    script.write_text(f"#!/bin/sh\necho fake systemctl $1\nexit {exit_code}\n")
    script.chmod(0o755)
    env = sandbox_env(tmp_path)
    env["PATH"] = os.pathsep.join([str(bin_dir), "/bin", "/usr/bin"])
    return env


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (
            ["install-service", "--user"],
            ExitCode.FAILED,
            "`systemctl` exited with status 1: ",
        ),
        (["uninstall-service", "--user"], ExitCode.FAILED, "`systemctl` exited with status 1; "),
        (
            ["install-service", "--engines", "sdcpp@one"],
            ExitCode.USAGE,
            "bad GPU index in `sdcpp@one` (--engines)",
        ),
        (["install-service", "--sideways"], ExitCode.USAGE, "No such option: --sideways"),
    ],
)
def test_service_commands(tmp_path, args, code, expected):
    env = fake_systemctl(tmp_path, exit_code=1)
    done = cli(tmp_path, "--config", str(tmp_path / "config.toml"), *args, env=env)
    line = assert_one_error(done, code)
    assert expected in line
    if code == ExitCode.FAILED:  # and the commands left are on stdout
        assert "run these yourself:" in done.stdout
        assert "run the commands printed above" in line


def test_install_service_cannot_write_the_unit(tmp_path):
    env = fake_systemctl(tmp_path, exit_code=0)
    (tmp_path / "xdg").write_text("a file where the unit's directory would go")
    done = cli(tmp_path, "--config", str(tmp_path / "config.toml"), "install-service", env=env)
    assert "cannot write " in assert_one_error(done, ExitCode.FAILED)


def test_a_bare_group_is_a_usage_error(tmp_path):
    done = cli(tmp_path, "studio")
    assert "Missing command. (see `supervisor studio --help`)" in assert_one_error(
        done, ExitCode.USAGE
    )


def test_start_refuses_a_gpu_that_is_not_there_before_spawning(tmp_path):
    gpus = tmp_path / "gpus.json"
    gpus.write_text('{"devices": [{"index": 0, "name": "Sim 24G", "total_mib": 24576}]}')
    env = sandbox_env(tmp_path)
    env["STUDIO_WORKER_SIMULATED_GPUS"] = str(gpus)
    config = config_with(tmp_path)
    done = cli(tmp_path, "--config", str(config), "start", "--engines", "synthetic@3", env=env)
    line = assert_one_error(done, ExitCode.USAGE)
    assert "3" in line and "1 GPU" in line, line
