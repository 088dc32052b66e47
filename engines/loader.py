"""Construct the backend a host serves. Runs inside the host process only: this is the
one place an inference library gets imported, and only the one the slot asked for."""

from __future__ import annotations

import importlib
from pathlib import Path

from engines.base import Engine
from engines.catalog import ENGINES


def create_engine(
    name: str, models_root: Path, faults: str = "", threads: int | None = None
) -> Engine:
    """The engine ``name``; ``threads`` is the CPU thread count of a real engine (None: all
    available cores, see ``engines.cpu_threads``)."""
    spec = ENGINES.get(name)
    if spec is None:
        raise ValueError(f"unknown engine `{name}`; choose from {', '.join(sorted(ENGINES))}")
    if name == "synthetic":
        from engines.faults import parse_fault_options
        from engines.synthetic import SyntheticEngine

        return SyntheticEngine(parse_fault_options(faults))
    if faults:
        raise ValueError("fault injection is only available on the synthetic engine")
    module = importlib.import_module(spec.module)
    engine_cls: type[Engine] = module.ENGINE_CLASS
    return engine_cls(models_root, threads)  # type: ignore[call-arg]
