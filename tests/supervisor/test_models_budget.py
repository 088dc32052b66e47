"""``models_max_gb`` travels from config.toml to every engine host's command line, where
``--models-max-bytes`` sets the host's model cache budget (tests/engines/test_cache_host.py
shows a host keeping to it)."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from supervisor.config import WorkerConfig, load_config
from supervisor.errors import ConfigError
from supervisor.runtime import StartOptions, pool_settings
from tests.support.pool_harness import running_pool

GIB = 2**30
MINIMAL = 'api_base_url = "https://studio.example/"\nvram_threshold_gb = 8\nauto_start = false\n'


def host_argv(pid: int | None) -> list[str]:
    assert pid is not None
    return psutil.Process(pid).cmdline()


def test_the_budget_is_read_in_gib_and_none_by_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL + "models_max_gb = 1.5\n")
    opts = StartOptions(config_path=path)
    assert pool_settings(load_config(path), opts).models_max_bytes == 3 * GIB // 2
    assert pool_settings(WorkerConfig(), opts).models_max_bytes == 0
    path.write_text(MINIMAL + "models_max_gb = -1\n")
    with pytest.raises(ConfigError, match=r"\$\.models_max_gb"):
        load_config(path)


@pytest.mark.anyio
async def test_every_host_is_started_with_the_budget(tmp_path: Path) -> None:
    async with running_pool(tmp_path, "synthetic,synthetic", models_max_bytes=12345) as run:
        await run.ready()
        for slot in run.pool.slots:
            argv = host_argv(slot.pid)
            assert argv[argv.index("--models-max-bytes") + 1] == "12345"


@pytest.mark.anyio
async def test_no_budget_no_option(tmp_path: Path) -> None:
    async with running_pool(tmp_path, "synthetic") as run:
        await run.ready()
        assert "--models-max-bytes" not in host_argv(run.slot.pid)
