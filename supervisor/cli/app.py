"""The ``supervisor`` command line: argument parsing and printing only.

Global options (``--config PATH``, ``--version``) come before the subcommand; each
subcommand calls one function in ``commands.py`` (or a module beside it) and prints what it
returns. Every refusal, in every command, is one ``error: <message>`` line on stderr and
the exit status of ``exit_codes.py``, never a traceback: a WorkerError exits with its
class's ``exit_code``, a bad flag or value (typer's usage errors, turned into that one line
by ``main``) with 2, and ``start`` with the code the session ended on.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from supervisor.cli import commands
from supervisor.cli.local_launch import command_config_path
from supervisor.cli.output import fail as _fail
from supervisor.cli.output import run as _run
from supervisor.cli.studio_app import studio_app, submit
from supervisor.config_paths import default_config_path
from supervisor.errors import WorkerError
from supervisor.exit_codes import ExitCode

# Outside `start` nothing configures logging, and Python's last-resort handler would print
# library warnings (config.py's "config.toml is invalid") beside the one `error:` line.
logging.getLogger("supervisor").addHandler(logging.NullHandler())

app = typer.Typer(
    name="supervisor",
    help="Headless multi-GPU worker for the minis studio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # rich tracebacks can print locals: the config's secrets
)


@dataclass(frozen=True)
class GlobalOptions:
    config_path: Path
    explicit_config: bool = False


def _print_version(value: bool) -> None:
    if value:
        typer.echo(commands.version_text())
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="PATH",
            help="config.toml to use (default: the Rust worker's path).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    del version
    ctx.obj = GlobalOptions(
        config if config is not None else default_config_path(), explicit_config=config is not None
    )


def _config_path(ctx: typer.Context, *, local: bool = False) -> Path:
    """The command's config: ``--config``, else with ``--local`` the local worker's own
    (what ``start --local`` uses), else the default."""
    options = ctx.ensure_object(GlobalOptions)
    return command_config_path(
        options.config_path, explicit_config=options.explicit_config, local=local
    )


LaneOption = Annotated[
    str | None,
    typer.Option(
        "--lane",
        metavar="NAME",
        help="One lane (`gpu1`, as `status` lists them) with `start --lanes per-gpu`; "
        "default: every lane.",
    ),
]

LocalOption = Annotated[
    bool,
    typer.Option(
        "--local",
        help="The supervisor started with `start --local` (its own config beside the default "
        "one; --config wins).",
    ),
]


@app.command()
def register(
    ctx: typer.Context,
    api_base_url: Annotated[
        str | None,
        typer.Option("--api-base-url", metavar="URL", help="Studio base URL, stored verbatim."),
    ] = None,
    reset: Annotated[
        bool,
        typer.Option("--reset", help="Clear the worker id, token and pending request."),
    ] = False,
    lane: LaneOption = None,
) -> None:
    """Prepare registration (no network); `supervisor start` submits the request."""
    path = _config_path(ctx)
    _run(lambda: commands.register(path, api_base_url=api_base_url, reset=reset, lane=lane))


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the config file path and its contents (including secrets)."""
    path = _config_path(ctx)
    _run(lambda: commands.show_config(path))


@app.command("check-update")
def check_update(ctx: typer.Context) -> None:
    """Ask the package index (through pip) for a newer studio-worker; exit 0 either way."""
    from supervisor.cli.update_command import check_update as check

    path = _config_path(ctx)
    _run(lambda: check(path))


@app.command(context_settings={"ignore_unknown_options": True})
def set_threshold(
    ctx: typer.Context,
    gb: Annotated[float, typer.Argument(metavar="GB", help="Largest job VRAM estimate to claim.")],
    lane: LaneOption = None,
) -> None:
    """Set vram_threshold_gb (of every lane, or of one)."""
    path = _config_path(ctx)
    _run(lambda: commands.set_threshold(path, gb, lane=lane))


@app.command()
def start(
    ctx: typer.Context,
    engines: Annotated[
        str | None,
        typer.Option(
            "--engines",
            metavar="LIST",
            help="Engine slots, e.g. `sdcpp,llama` or `sdcpp@0,sdcpp@1,llama@1` (engine@GPU). "
            "`synthetic` is added unless you list `-synthetic`. Default: the config's `engines`.",
        ),
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Also run a local studio on 127.0.0.1 and work for it (no cloud studio needed). "
            "Uses its own config beside the default one unless --config is given.",
        ),
    ] = False,
    local_port: Annotated[
        int, typer.Option("--local-port", help="Port of the --local studio (0 = any free port).")
    ] = 9790,
    one_offer_per_worker: Annotated[
        bool,
        typer.Option(
            "--one-offer-per-worker",
            help="With --local: the local studio offers one job at a time per worker, like the "
            "cloud studio (default: up to the worker's maxConcurrentJobs).",
        ),
    ] = False,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="`text` (default) or `json` log lines.")
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics, /healthz and /readyz there (off by default).",
        ),
    ] = None,
    lanes: Annotated[
        str | None,
        typer.Option(
            "--lanes",
            metavar="MODE",
            help="`one` (default): one studio identity for every slot. `per-gpu`: one per GPU "
            "in --engines (each registers and is approved on its own), so a studio that offers "
            "a worker one job at a time keeps every GPU busy. Default: the config's `lanes`.",
        ),
    ] = None,
    faults: Annotated[str, typer.Option("--faults", hidden=True)] = "",
) -> None:
    """Run the worker: register if needed, start the engine hosts, serve the studio."""
    from supervisor.cli.start_command import run_start

    options = ctx.ensure_object(GlobalOptions)
    try:
        code = run_start(
            options.config_path,
            explicit_config=options.explicit_config,
            engines=engines,
            local=local,
            local_port=local_port,
            log_format=log_format,
            metrics=metrics,
            faults=faults,
            one_offer_per_worker=one_offer_per_worker,
            lanes=lanes,
        )
    except WorkerError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command()
def status(ctx: typer.Context, local: LocalOption = False, lane: LaneOption = None) -> None:
    """Registration, session and every engine slot of the running supervisor."""
    path = _config_path(ctx, local=local)
    try:
        text, down = commands.status(path, lane=lane)
    except WorkerError as exc:
        _fail(exc)
    typer.echo(text)  # the config lines and `supervisor: not running` are worth having
    if down is not None:
        _fail(down)


@app.command()
def pause(ctx: typer.Context, local: LocalOption = False, lane: LaneOption = None) -> None:
    """Reject new offers (runtime only; running jobs finish)."""
    path = _config_path(ctx, local=local)
    _run(lambda: commands.control(path, "pause", lane=lane))


@app.command()
def resume(ctx: typer.Context, local: LocalOption = False, lane: LaneOption = None) -> None:
    """Accept offers again after `pause`."""
    path = _config_path(ctx, local=local)
    _run(lambda: commands.control(path, "resume", lane=lane))


ScopeOption = Annotated[
    bool,
    typer.Option(
        "--user/--system",
        help="A user service (~/.config/systemd/user, no root) or a system service "
        "(/etc/systemd/system, a dedicated `studio-worker` user; needs root).",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the unit and the commands; change nothing.")
]


@app.command("install-service")
def install_service(
    ctx: typer.Context,
    user: ScopeOption = True,
    engines: Annotated[
        str | None,
        typer.Option(
            "--engines", metavar="LIST", help="Passed to `start`; default: the config's engines."
        ),
    ] = None,
    dry_run: DryRunOption = False,
    service_user: Annotated[
        str, typer.Option("--service-user", help="Account of a --system service.")
    ] = "studio-worker",
    exec_path: Annotated[
        Path | None,
        typer.Option("--exec-path", metavar="PATH", help="The `supervisor` script to run."),
    ] = None,
) -> None:
    """Install and start a systemd service running `supervisor start` (prints each command)."""
    from supervisor.cli.service_commands import install_service as install

    options = ctx.ensure_object(GlobalOptions)
    try:
        code = install(
            scope="user" if user else "system",
            config_path=options.config_path,
            explicit_config=options.explicit_config,
            engines=engines,
            dry_run=dry_run,
            echo=typer.echo,
            service_user=service_user,
            exec_path=exec_path,
        )
    except WorkerError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command("uninstall-service")
def uninstall_service(user: ScopeOption = True, dry_run: DryRunOption = False) -> None:
    """Stop, disable and remove the systemd service (config, credentials, models stay)."""
    from supervisor.cli.service_commands import uninstall_service as uninstall

    try:
        code = uninstall(scope="user" if user else "system", dry_run=dry_run, echo=typer.echo)
    except WorkerError as exc:
        _fail(exc)
    raise typer.Exit(code)


app.add_typer(studio_app, name="studio")
app.command()(submit)


def main() -> None:
    """Console-script entry point (``supervisor``). Run without typer's standalone mode so a
    bad flag or value comes back here and is reported like every other refusal: one
    ``error:`` line and exit status 2 (typer would draw a box of usage text)."""
    try:
        code = app(prog_name="supervisor", standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors: no such option, bad value...
        message = exc.format_message()
        if message:  # empty: a bare `supervisor`, whose help is already printed
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(message.splitlines())}{hint}", err=True)
        code = ExitCode.USAGE
    except typer.Abort:  # end of input at a prompt
        typer.echo("error: aborted", err=True)
        code = ExitCode.FAILED
    sys.exit(code)
