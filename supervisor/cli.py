"""The ``supervisor`` command line: argument parsing and printing only.

Global options (``--config PATH``, ``--version``) come before the subcommand; each
subcommand calls one function in ``commands.py`` and prints what it returns. A WorkerError
becomes ``error: <message>`` on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from supervisor import commands
from supervisor.config import default_config_path
from supervisor.errors import WorkerError

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
    ctx.obj = GlobalOptions(config if config is not None else default_config_path())


def _config_path(ctx: typer.Context) -> Path:
    options = ctx.ensure_object(GlobalOptions)
    return options.config_path


def _run(action: Callable[[], str]) -> None:
    """Print what ``action`` returns; a WorkerError exits 1 with its message on stderr."""
    try:
        text = action()
    except WorkerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(text)


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
) -> None:
    """Prepare registration (no network); `supervisor start` submits the request."""
    path = _config_path(ctx)
    _run(lambda: commands.register(path, api_base_url=api_base_url, reset=reset))


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the config file path and its contents (including secrets)."""
    path = _config_path(ctx)
    _run(lambda: commands.show_config(path))


@app.command(context_settings={"ignore_unknown_options": True})
def set_threshold(
    ctx: typer.Context,
    gb: Annotated[float, typer.Argument(metavar="GB", help="Largest job VRAM estimate to claim.")],
) -> None:
    """Set vram_threshold_gb."""
    path = _config_path(ctx)
    _run(lambda: commands.set_threshold(path, gb))


def main() -> None:
    """Console-script entry point (``supervisor``)."""
    app(prog_name="supervisor")
