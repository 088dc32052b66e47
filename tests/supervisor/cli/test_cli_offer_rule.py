"""``--one-offer-per-worker`` on the commands that start a local studio, as real processes:
``supervisor studio serve`` and ``supervisor start --local`` (which hands the flag to the
studio it starts). Each is checked by behaviour, with a raw WebSocket worker that could run
two jobs: the studio offers it the second only after the first completed
(``tests.localstudio.offer_scenario``).
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from supervisor.cli.app import app
from tests.localstudio.offer_scenario import JOB_VRAM_GB, offers_one_at_a_time, studio_at
from tests.support.contract_harness import (
    CLI,
    STUDIO_READY,
    Processes,
    free_port,
    start_supervisor,
    write_worker_config,
)

LOCAL_STUDIO_RUNNING = re.compile(r"local studio running at (\S+)")


@pytest.mark.anyio
async def test_studio_serve_one_offer_per_worker(processes: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "studio-data"
    argv = [*CLI, "studio", "serve", "--port", "0", "--data-dir", str(data_dir)]
    proc = processes.spawn("studio", [*argv, "--one-offer-per-worker"])
    line_no, ready = await anyio.to_thread.run_sync(proc.log.wait_for, STUDIO_READY)
    assert proc.log.snapshot()[line_no].endswith("; one offer per worker)")
    async with studio_at(ready.group(1), data_dir) as studio:
        await offers_one_at_a_time(studio)


@pytest.mark.anyio
async def test_start_local_hands_the_flag_to_its_studio(
    processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "local" / "config.toml"
    # The supervisor's own worker must not take the test's jobs: its threshold is below
    # their estimate, so only the raw worker is eligible.
    write_worker_config(config, "http://127.0.0.1:9/", vram_threshold_gb=JOB_VRAM_GB / 2)
    port = free_port()
    sup = start_supervisor(
        processes, config, "--local", "--local-port", str(port), "--one-offer-per-worker"
    )
    _, running = await anyio.to_thread.run_sync(sup.proc.log.wait_for, LOCAL_STUDIO_RUNNING)
    assert running.group(1) == f"http://127.0.0.1:{port}"
    sup.proc.note_descendants()  # the local studio must stop with the supervisor
    async with studio_at(running.group(1), config.parent / "studio") as studio:
        await offers_one_at_a_time(studio, approve=False)  # --local approves by itself


def test_one_offer_per_worker_needs_local(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    write_worker_config(config, "http://127.0.0.1:9/")
    result = CliRunner().invoke(
        app, ["--config", str(config), "start", "--one-offer-per-worker"], prog_name="supervisor"
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --one-offer-per-worker sets the --local studio's offer rule; add --local\n"
    )
