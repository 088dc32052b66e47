"""``supervisor install-service`` / ``uninstall-service``: write or remove the systemd unit
and run ``systemctl``, printing every command it runs and what it printed.

The unit text and the command lists come from ``service`` (pure); this module only finds
the facts (the ``supervisor`` script, the config, which GPU groups exist), touches the
file system and runs commands. When ``systemctl`` is missing or a command fails, the
commands still to be run are printed for the operator and ServiceError is raised (exit
status 1); the unit file stays written so they can be run by hand. ``--dry-run`` prints
everything and changes nothing.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from engines.catalog import missing_backend
from supervisor.cli.service_unit import (
    GPU_GROUPS,
    SYSTEM_CONFIG_PATH,
    SYSTEM_ENV_FILE,
    SYSTEM_STATE_DIR,
    UNIT_FILE_NAME,
    USER_ENV_FILE,
    Scope,
    ServiceSpec,
    install_commands,
    render_unit,
    state_dir_command,
    systemctl,
    uninstall_commands,
    unit_path,
    useradd_command,
)
from supervisor.config import WorkerConfig, load_config
from supervisor.errors import ServiceError, UsageError
from supervisor.pool.slot_spec import parse_engines

Echo = Callable[[str], None]
COMMAND_TIMEOUT_S = 120.0


def locate_supervisor() -> Path:
    """The ``supervisor`` console script of this installation, as an absolute path.

    The one beside the running interpreter first (a virtualenv's ``bin/``), so the unit
    runs the same installation that wrote it; then ``PATH``.
    """
    beside = Path(sys.executable).parent / "supervisor"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("supervisor")
    if found:
        return Path(found).absolute()
    raise UsageError(
        "cannot find the `supervisor` script of this installation; pass --exec-path PATH"
    )


def xdg_config_home(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    return Path(env.get("HOME") or Path.home()) / ".config"


def existing_groups(names: tuple[str, ...]) -> tuple[str, ...]:
    """systemd refuses to start a unit whose SupplementaryGroups= names a missing group."""
    found = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        found.append(name)
    return tuple(found)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _existing_config(path: Path) -> WorkerConfig | None:
    """The config if there is one; never creates it (``load_config`` would)."""
    return load_config(path) if path.is_file() else None


def _show(argv: list[str]) -> str:
    return "$ " + shlex.join(argv)


def run_commands(commands: list[list[str]], echo: Echo) -> str | None:
    """Run each command, printing it and its output; on the first failure (or a missing
    program) print the commands left to run by hand and return what went wrong."""
    for i, argv in enumerate(commands):
        echo(_show(argv))
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
        except FileNotFoundError:
            problem = f"`{argv[0]}` not found"
        except subprocess.TimeoutExpired:
            problem = f"`{argv[0]}` did not finish within {COMMAND_TIMEOUT_S:.0f} s"
        else:
            output = (done.stdout + done.stderr).strip()
            if output:
                echo(output)
            if done.returncode == 0:
                continue
            problem = f"`{argv[0]}` exited with status {done.returncode}"
        echo(f"{problem}; run these yourself:")
        for left in commands[i:]:
            echo("  " + shlex.join(left))
        return problem
    return None


def _check_engines(engines: str) -> None:
    """What `start --engines` would refuse, refused now rather than in a restart loop."""
    specs = parse_engines(engines)  # SlotSpecError: a usage error like UsageError
    problems = [p for p in (missing_backend(e) for e in sorted({s.engine for s in specs})) if p]
    if problems:
        raise UsageError("; ".join(problems))


def _require_root(scope: Scope, what: str) -> None:
    if scope == "system" and os.geteuid() != 0:
        raise UsageError(
            f"{what} a system service needs root: run it with sudo, or use --user "
            "(--dry-run shows what would happen)"
        )


def install_service(
    *,
    scope: Scope,
    config_path: Path,
    explicit_config: bool,
    engines: str | None,
    dry_run: bool,
    echo: Echo,
    service_user: str = "studio-worker",
    exec_path: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> int:
    if engines is not None:
        _check_engines(engines)
    system = scope == "system"
    if system and not explicit_config:
        config_path = SYSTEM_CONFIG_PATH
    config_path = config_path.expanduser().absolute()
    cfg = _existing_config(config_path)
    writable: tuple[Path, ...] = ()
    if cfg is not None:
        writable = (Path(cfg.models_root).absolute(),)
    groups = existing_groups(GPU_GROUPS) if system else ()
    spec = ServiceSpec(
        scope=scope,
        exec_path=(exec_path or locate_supervisor()).absolute(),
        config_path=config_path,
        engines=engines,
        service_user=service_user,
        supplementary_groups=groups,
        writable_paths=writable,
        drain_grace_s=cfg.drain_grace_s if cfg is not None else 30.0,
    )
    if system and spec.exec_path.parts[1:2] in (("root",), ("home",)):
        echo(
            f"note: {spec.exec_path} is under a home directory; the `{service_user}` account "
            "must be able to read it (install into e.g. /opt/studio-worker for a system service)"
        )
    unit = render_unit(spec)
    path = unit_path(scope, xdg_config_home(env))
    prepare: list[list[str]] = []
    if system and not _user_exists(service_user):
        prepare.append(useradd_command(service_user, groups))
    if system and config_path.parent == SYSTEM_STATE_DIR:
        prepare.append(state_dir_command(service_user))
    commands = install_commands(scope)
    if dry_run:
        echo(f"# dry run: nothing is changed. The unit would be written to {path}:")
        echo(unit)
        echo("# and these commands run:")
        for argv in [*prepare, *commands]:
            echo("  " + shlex.join(argv))
        return 0
    _require_root(scope, "installing")
    if prepare and (problem := run_commands(prepare, echo)):
        raise ServiceError(f"{problem}: nothing is installed yet; run the commands printed above")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit)
        path.chmod(0o644)
    except OSError as exc:
        raise ServiceError(
            f"cannot write {path}: {exc.strerror or exc}; `--dry-run` prints the unit to "
            "install by hand"
        ) from None
    echo(f"wrote {path}")
    if problem := run_commands(commands, echo):
        raise ServiceError(f"{problem}: {path} is written; run the commands printed above")
    _after_install_notes(scope, config_path, cfg, echo)
    return 0


def _after_install_notes(
    scope: Scope, config_path: Path, cfg: WorkerConfig | None, echo: Echo
) -> None:
    flag = " --user" if scope == "user" else ""
    echo(
        f"installed: systemctl{flag} status {UNIT_FILE_NAME}; logs: journalctl{flag} -u "
        f"{UNIT_FILE_NAME} -f"
    )
    echo(
        f"options for `start` (--metrics, --log-format) go in STUDIO_WORKER_ARGS in "
        f"{SYSTEM_ENV_FILE if scope == 'system' else USER_ENV_FILE.replace('%h', '~')}"
    )
    if cfg is None or not cfg.has_credentials:
        echo(
            f"not registered yet: the service submits a registration request to the studio; "
            f"approve it there (config: {config_path})"
        )
    if scope == "user":
        echo("to keep it running while you are logged out: loginctl enable-linger $USER")


def uninstall_service(
    *, scope: Scope, dry_run: bool, echo: Echo, env: Mapping[str, str] = os.environ
) -> int:
    path = unit_path(scope, xdg_config_home(env))
    stop = uninstall_commands(scope)
    reload = [systemctl(scope, "daemon-reload")]
    if dry_run:
        echo("# dry run: nothing is changed. These commands would run:")
        echo("  " + shlex.join(stop[0]))
        echo(f"  rm {shlex.quote(str(path))}")
        echo("  " + shlex.join(reload[0]))
        return 0
    _require_root(scope, "removing")
    problem = run_commands(stop, echo)
    if path.exists():
        try:
            path.unlink()
        except OSError as exc:
            raise ServiceError(f"cannot remove {path}: {exc.strerror or exc}") from None
        echo(f"removed {path}")
    else:
        echo(f"{path} was not there")
    problem = run_commands(reload, echo) or problem
    if scope == "system":
        echo(
            f"left in place: the service user, {SYSTEM_STATE_DIR} (config with credentials, "
            f"models) and {SYSTEM_ENV_FILE}"
        )
    if problem:
        raise ServiceError(f"{problem}; run the commands printed above")
    return 0
