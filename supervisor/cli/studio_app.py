"""``supervisor studio ...`` and ``supervisor submit``: the local studio's commands, parsed
here and done by ``studio_commands`` (``app`` mounts them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from supervisor.cli import studio_commands
from supervisor.cli.output import fail as _fail
from supervisor.cli.output import run as _run
from supervisor.errors import WorkerError

studio_app = typer.Typer(help="Run and operate a local studio (self-hosting, trying the worker).")
StudioUrl = Annotated[str, typer.Option("--studio", metavar="URL", help="Local studio base URL.")]


@studio_app.command("serve")
def studio_serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 9790,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", metavar="DIR")] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve every registration request at once.")
    ] = False,
    heartbeat_timeout: Annotated[float, typer.Option("--heartbeat-timeout")] = 30.0,
    one_offer_per_worker: Annotated[
        bool,
        typer.Option(
            "--one-offer-per-worker",
            help="Offer one job at a time per worker, like the cloud studio "
            "(default: up to the worker's maxConcurrentJobs).",
        ),
    ] = False,
) -> None:
    """Serve the local studio until Ctrl-C (SQLite queue and assets under --data-dir)."""
    argv = ["--host", host, "--port", str(port), "--heartbeat-timeout", str(heartbeat_timeout)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if auto_approve:
        argv.append("--auto-approve")
    if one_offer_per_worker:
        argv.append("--one-offer-per-worker")
    try:
        code = studio_commands.serve(argv)
    except WorkerError as exc:
        _fail(exc)
    raise typer.Exit(code)


@studio_app.command("pending")
def studio_pending(studio: StudioUrl = studio_commands.DEFAULT_STUDIO_URL) -> None:
    """List registration requests waiting for a decision."""
    _run(lambda: studio_commands.pending(studio))


@studio_app.command("approve")
def studio_approve(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    studio: StudioUrl = studio_commands.DEFAULT_STUDIO_URL,
) -> None:
    """Approve a pending worker."""
    _run(lambda: studio_commands.decide(studio, request_id, True))


@studio_app.command("reject")
def studio_reject(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason")] = "",
    studio: StudioUrl = studio_commands.DEFAULT_STUDIO_URL,
) -> None:
    """Reject a pending worker."""
    _run(lambda: studio_commands.decide(studio, request_id, False, reason))


@studio_app.command("revoke")
def studio_revoke(
    worker_id: Annotated[str, typer.Argument(metavar="WORKER_ID")],
    studio: StudioUrl = studio_commands.DEFAULT_STUDIO_URL,
) -> None:
    """Take an approved worker's token away; its live session is closed (auth failed)."""
    _run(lambda: studio_commands.revoke(studio, worker_id))


@studio_app.command("jobs")
def studio_jobs(studio: StudioUrl = studio_commands.DEFAULT_STUDIO_URL) -> None:
    """List the local studio's jobs."""
    _run(lambda: studio_commands.list_jobs(studio))


def submit(
    prompt: Annotated[
        str, typer.Option("--prompt", help="Prompt; the input URL for audio_stt, text for tts.")
    ],
    kind: Annotated[str, typer.Option("--kind")] = "image",
    model: Annotated[str, typer.Option("--model")] = "synthetic",
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="sd-cpp, llama-cpp or synthetic (implied for synthetic*)."),
    ] = None,
    file: Annotated[
        list[str] | None,
        typer.Option("--file", metavar="ROLE=URL[#SHA256]", help="A model file (repeatable)."),
    ] = None,
    width: Annotated[int | None, typer.Option("--width")] = None,
    height: Annotated[int | None, typer.Option("--height")] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    ext: Annotated[str | None, typer.Option("--ext")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens")] = None,
    system: Annotated[str | None, typer.Option("--system")] = None,
    json_schema: Annotated[
        str | None, typer.Option("--json-schema", help="A JSON schema (inline or a file).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where results are saved.")] = Path(),
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    studio: StudioUrl = studio_commands.DEFAULT_STUDIO_URL,
) -> None:
    """Queue a job on a local studio, wait for it, and save the asset or JSON (a failed job
    is an `error:` line and exit status 1)."""
    options: dict[str, object] = {}
    try:
        if kind in ("image", "video"):
            options.update(width=width, height=height, ext=ext)
            if kind == "image":
                options.update(steps=steps, seed=seed)
        elif kind == "llm":
            options.update(
                max_tokens=max_tokens,
                system=system,
                seed=seed,
                json_schema=studio_commands.parse_json_option(json_schema),
            )
        elif kind == "audio_tts":
            options.update(ext=ext)
        task = studio_commands.build_task(kind, prompt, options)
        source = studio_commands.build_source(model, engine, file or [])
        text = studio_commands.submit(studio, task, source, model, out_dir=out, timeout_s=timeout)
    except WorkerError as exc:
        _fail(exc)
    typer.echo(text)
