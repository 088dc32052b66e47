"""Construct the backend a host serves. Runs inside the host process only: this is the
one place an inference library gets imported, and only the one the slot asked for."""

from __future__ import annotations

import importlib
from pathlib import Path

from engines.base import Engine
from engines.catalog import ENGINES


def create_engine(
    name: str,
    models_root: Path,
    faults: str = "",
    threads: int | None = None,
    max_warm_models: int = 1,
) -> Engine:
    """The engine ``name``; ``threads`` is the CPU thread count of a real engine (None: all
    available cores, see ``engines.cpu_threads``), ``max_warm_models`` how many models it
    keeps loaded at once."""
    spec = ENGINES.get(name)
    if spec is None:
        raise ValueError(f"unknown engine `{name}`; choose from {', '.join(sorted(ENGINES))}")
    if max_warm_models < 1:
        raise ValueError(f"max_warm_models must be at least 1, got {max_warm_models}")
    engine: Engine
    if name == "synthetic":
        from engines.faults import parse_fault_options
        from engines.synthetic import SyntheticEngine

        engine = SyntheticEngine(parse_fault_options(faults))
    elif faults:
        raise ValueError("fault injection is only available on the synthetic engine")
    else:
        module = importlib.import_module(spec.module)
        engine_cls: type[Engine] = module.ENGINE_CLASS
        engine = engine_cls(models_root, threads)  # type: ignore[call-arg]
    engine.max_warm_models = max_warm_models
    return engine
