"""Build the capability snapshot (protocol.md §5) from live config and the pool."""

from __future__ import annotations

from protocol.studio import Capabilities
from protocol.tasks import TASK_KINDS, TaskKindName
from supervisor import __version__
from supervisor.config import WorkerConfig
from supervisor.machine_facts import machine_name, user_name

ENGINE_NAME = "multi"


def build_capabilities(
    cfg: WorkerConfig,
    models_per_kind: dict[str, list[str]],
    *,
    paused: bool,
    max_concurrent_jobs: int,
    vram_gb: tuple[float, float],
    machine_suffix: str = "",
) -> Capabilities:
    """``vram_gb`` is (total, threshold) as the pool's GPU governor sees them now: every
    card's memory, and the config's threshold lowered while a job that large could not fit
    (``GpuGovernor.advertised_gb``). ``machine_suffix`` names a lane (``/gpu1``): the
    studio's operator tells lanes apart by ``machineName``."""
    total_gb, threshold_gb = vram_gb
    kinds: list[TaskKindName] = [k for k in TASK_KINDS if models_per_kind.get(k)]
    per_kind: dict[str, list[str]] = {k: list(models_per_kind[k]) for k in kinds}
    every = sorted({m for models in per_kind.values() for m in models})
    return Capabilities(
        machine_name=machine_name() + machine_suffix,
        username=user_name(),
        agent_version=__version__,
        engine=ENGINE_NAME,
        vram_total_gb=total_gb,
        vram_threshold_gb=threshold_gb,
        auto_enabled=not paused,
        auto_start=cfg.auto_start,
        auto_update=cfg.auto_update_enabled,
        start_minimised=cfg.start_minimised,
        only_when_idle=cfg.only_when_idle,
        supported_models=every,
        task_kinds=kinds,
        supported_models_per_kind=per_kind,
        max_concurrent_jobs=max_concurrent_jobs,
    )


def summary_line(caps: Capabilities) -> str:
    """The one-line handshake summary the Rust worker logs (tests pin its pieces)."""
    models = caps.supported_models
    return (
        f"advertising engine={caps.engine}, vram={caps.vram_total_gb:.1f}/"
        f"{caps.vram_threshold_gb:.1f}GB threshold, auto_enabled={str(caps.auto_enabled).lower()}, "
        f"kinds=[{', '.join(caps.task_kinds)}], {len(models)} model(s)=[{', '.join(models)}]"
    )
