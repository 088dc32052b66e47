"""The systemd unit (rendered and checked field by field, and by `systemd-analyze verify`
where it exists) and `supervisor install-service` / `uninstall-service` as real processes
under a temporary HOME, with a PATH that lacks systemctl or holds a recording stand-in."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cli.service_commands import install_service
from supervisor.cli.service_unit import ServiceSpec, render_unit, systemd_quote, timeout_stop_s
from supervisor.errors import UsageError
from tests.support.supervisor_harness import write_config

CLI = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]
EXEC = Path("/opt/studio-worker/.venv/bin/supervisor")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (key, values)
    return values[0]


def test_user_unit_fields(tmp_path: Path):
    spec = ServiceSpec(
        "user", EXEC, tmp_path / "config.toml", engines="sdcpp@0,llama@1", drain_grace_s=30
    )
    unit = parse_unit(render_unit(spec))
    s = "Service"
    assert shlex.split(one(unit, s, "ExecStart")) == [
        str(EXEC),
        "--config",
        str(tmp_path / "config.toml"),
        "start",
        "--engines",
        "sdcpp@0,llama@1",
        "$STUDIO_WORKER_ARGS",
    ]
    assert one(unit, s, "Restart") == "on-failure"
    assert one(unit, s, "KillMode") == "mixed"
    assert one(unit, s, "KillSignal") == "SIGTERM"
    # Drain grace (session, then pool) + Shutdown/SIGTERM ladder + margin.
    assert int(one(unit, s, "TimeoutStopSec")) == 85 == timeout_stop_s(30)
    assert one(unit, s, "RestartPreventExitStatus") == "2 3"
    assert one(unit, s, "OOMPolicy") == "continue"
    assert one(unit, s, "NoNewPrivileges") == "yes"
    assert one(unit, s, "EnvironmentFile") == "-%h/.config/studio-worker/studio-worker.env"
    assert "User" not in unit[s] and "ProtectSystem" not in unit[s]
    assert one(unit, "Install", "WantedBy") == "default.target"


def test_system_unit_hardening_keeps_gpus_reachable(tmp_path: Path):
    config = Path("/var/lib/studio-worker/config.toml")
    spec = ServiceSpec(
        "system",
        EXEC,
        config,
        service_user="gpu-worker",
        supplementary_groups=("video", "render"),
        writable_paths=(Path("/srv/models"),),
        drain_grace_s=60,
    )
    text = render_unit(spec)
    unit = parse_unit(text)
    s = "Service"
    assert one(unit, s, "User") == "gpu-worker"
    assert one(unit, s, "Group") == "gpu-worker"
    assert one(unit, s, "SupplementaryGroups") == "video render"
    assert one(unit, s, "StateDirectory") == "studio-worker"
    assert one(unit, s, "EnvironmentFile") == "-/etc/studio-worker/studio-worker.env"
    assert shlex.split(one(unit, s, "ExecStart"))[:4] == [
        str(EXEC),
        "--config",
        str(config),
        "start",
    ]
    assert "--engines" not in one(unit, s, "ExecStart")  # the config's engines
    assert int(one(unit, s, "TimeoutStopSec")) == 2 * 60 + 10 + 15
    assert one(unit, s, "ProtectSystem") == "strict"
    assert one(unit, s, "ProtectHome") == "read-only"
    assert one(unit, s, "PrivateTmp") == "yes"
    assert one(unit, s, "ReadWritePaths").split() == ["-/srv/models", "-/var/lib/studio-worker"]
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock",
                "MemoryDenyWriteExecute", "ProtectKernelLogs"):  # fmt: skip
        assert key not in unit[s], key
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_both_units(tmp_path: Path):
    exec_path = tmp_path / "supervisor"
    exec_path.write_text("#!/bin/sh\n")
    exec_path.chmod(0o755)
    for scope in ("system", "user"):
        spec = ServiceSpec(scope, exec_path, tmp_path / "config.toml", engines="llama")
        unit = tmp_path / f"{scope}" / "studio-worker.service"
        unit.parent.mkdir()
        unit.write_text(render_unit(spec))
        done = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "Unknown key" not in done.stderr and "nvalid" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("arg", "word"),
    [
        ("/opt/sw/bin/supervisor", "/opt/sw/bin/supervisor"),
        ("sdcpp@0,llama@1", "sdcpp@0,llama@1"),
        ("/srv/my models/config.toml", '"/srv/my models/config.toml"'),
        ("/srv/100%/x", "/srv/100%%/x"),
        ('a"b$c', '"a\\"b$$c"'),
    ],
)
def test_systemd_quote(arg, word):
    assert systemd_quote(arg) == word
    if " " in arg:
        assert shlex.split(word) == [arg]


def sandbox_env(tmp_path: Path, path_dirs: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "PATH")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        PATH=os.pathsep.join(str(p) for p in path_dirs),
    )
    return env


def fake_systemctl(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A `systemctl` that records its arguments; returns (its dir, the record file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "systemctl.calls"
    script = bin_dir / "systemctl"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> {record}\necho "fake systemctl $1"\nexit {exit_code}\n'
    )
    script.chmod(0o755)
    return bin_dir, record


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_install_and_uninstall_user_service_run_systemctl(tmp_path: Path):
    config = tmp_path / "cfg" / "config.toml"
    write_config(config, "http://127.0.0.1:9/", models_root=tmp_path / "models")
    bin_dir, record = fake_systemctl(tmp_path)
    env = sandbox_env(tmp_path, [bin_dir, Path("/bin"), Path("/usr/bin")])
    done = cli(env, "--config", str(config), "install-service", "--user", "--engines", "synthetic")
    assert done.returncode == 0, done.stdout + done.stderr
    unit_file = tmp_path / "xdg" / "systemd" / "user" / "studio-worker.service"
    unit = parse_unit(unit_file.read_text())
    exec_start = shlex.split(one(unit, "Service", "ExecStart"))
    assert Path(exec_start[0]).is_absolute() and Path(exec_start[0]).name == "supervisor"
    assert exec_start[1:6] == ["--config", str(config), "start", "--engines", "synthetic"]
    assert record.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now studio-worker.service",
    ]
    out = done.stdout
    assert "$ systemctl --user daemon-reload\nfake systemctl --user" in out
    assert "$ systemctl --user enable --now studio-worker.service" in out
    assert "loginctl enable-linger" in out

    record.unlink()
    done = cli(env, "uninstall-service", "--user")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not unit_file.exists()
    assert record.read_text().splitlines() == [
        "--user disable --now studio-worker.service",
        "--user daemon-reload",
    ]
    assert f"removed {unit_file}" in done.stdout


def test_install_without_systemctl_prints_the_commands(tmp_path: Path):
    config = tmp_path / "config.toml"
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = sandbox_env(tmp_path, [empty])
    done = cli(env, "--config", str(config), "install-service")
    assert done.returncode == 1
    assert (tmp_path / "xdg" / "systemd" / "user" / "studio-worker.service").is_file()
    assert not config.exists()  # the installer never creates the config
    assert done.stdout.splitlines()[-3:] == [
        "`systemctl` not found; run these yourself:",
        "  systemctl --user daemon-reload",
        "  systemctl --user enable --now studio-worker.service",
    ]


def test_a_failing_systemctl_prints_what_is_left(tmp_path: Path):
    bin_dir, record = fake_systemctl(tmp_path, exit_code=1)
    env = sandbox_env(tmp_path, [bin_dir, Path("/bin"), Path("/usr/bin")])
    done = cli(env, "--config", str(tmp_path / "config.toml"), "install-service", "--user")
    assert done.returncode == 1
    assert record.read_text().splitlines() == ["--user daemon-reload"]
    assert "`systemctl` exited with status 1; run these yourself:" in done.stdout
    assert done.stdout.rstrip().endswith("systemctl --user enable --now studio-worker.service")


def test_dry_run_changes_nothing(tmp_path: Path):
    bin_dir, record = fake_systemctl(tmp_path)
    env = sandbox_env(tmp_path, [bin_dir])
    done = cli(env, "install-service", "--system", "--engines", "synthetic@0", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "/etc/systemd/system/studio-worker.service" in done.stdout
    assert "--config /var/lib/studio-worker/config.toml start --engines synthetic@0" in done.stdout
    assert "  systemctl enable --now studio-worker.service" in done.stdout
    assert not record.exists()
    assert not (tmp_path / "xdg").exists()
    done = cli(env, "uninstall-service", "--dry-run")
    assert done.returncode == 0 and not record.exists()
    assert "systemctl --user disable --now studio-worker.service" in done.stdout


def test_unknown_engines_are_refused_before_anything_is_written(tmp_path: Path):
    env = sandbox_env(tmp_path, [Path("/bin"), Path("/usr/bin")])
    done = cli(env, "install-service", "--engines", "nope@0")
    assert done.returncode == 2  # exit_codes.USAGE
    assert done.stderr.startswith("error: unknown engine `nope` in --engines")
    assert not (tmp_path / "xdg").exists()


def test_system_install_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lines: list[str] = []
    with pytest.raises(UsageError, match="needs root: run it with sudo, or use --user"):
        install_service(
            scope="system",
            config_path=tmp_path / "config.toml",
            explicit_config=True,
            engines=None,
            dry_run=False,
            echo=lines.append,
            service_user="root",  # exists, so no useradd is planned
            exec_path=EXEC,
            env={"HOME": str(tmp_path)},
        )
    assert lines == []  # nothing planned, nothing run
