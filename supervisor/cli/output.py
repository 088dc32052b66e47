"""How every command ends: what it returns printed on stdout, or one ``error:`` line on
stderr and the exit status of its error's class (``supervisor.exit_codes``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import typer

from supervisor.errors import WorkerError


def fail(exc: WorkerError) -> NoReturn:
    """``error: <message>`` as one line on stderr, then the exit status of its class."""
    message = " ".join(str(exc).splitlines())  # a studio's body may span lines
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exc.exit_code) from None


def run(action: Callable[[], str]) -> None:
    """Print what ``action`` returns; a WorkerError is reported by ``fail``."""
    try:
        text = action()
    except WorkerError as exc:
        fail(exc)
    typer.echo(text)
