"""Which engines exist, what they need installed, and how offers map onto them.

Imported by the supervisor, so it must never import an inference library: availability is
checked with ``importlib.util.find_spec``, which locates a package without running it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Final

from protocol.tasks import TASK_KINDS


@dataclass(frozen=True)
class EngineSpec:
    name: str  # CLI / slot name
    source_engine: str  # ModelSource.engine value routed to it
    module: str  # engines.<module> holding the backend class
    backend_package: str | None  # the library it imports, None for pure Python
    extra: str | None  # pip extra that installs it
    kinds: tuple[str, ...]  # task kinds it serves; anything else is refused up front


ENGINES: Final[dict[str, EngineSpec]] = {
    "synthetic": EngineSpec("synthetic", "synthetic", "engines.synthetic", None, None, TASK_KINDS),
    "sdcpp": EngineSpec(
        "sdcpp", "sd-cpp", "engines.sdcpp", "stable_diffusion_cpp", "sdcpp", ("image",)
    ),
    "llama": EngineSpec("llama", "llama-cpp", "engines.llama", "llama_cpp", "llama", ("llm",)),
}

# Engines the studio knows but this worker does not ship (offers for them fail, not retried).
KNOWN_SOURCE_ENGINES: Final[dict[str, str]] = {
    "sd-cpp": "sdcpp",
    "llama-cpp": "llama",
    "synthetic": "synthetic",
    "onnx": "onnx",
    "parakeet": "parakeet",
}


def engine_for_source(source_engine: str) -> str:
    """The slot engine name a ``modelSource.engine`` value routes to (itself if unknown)."""
    return KNOWN_SOURCE_ENGINES.get(source_engine, source_engine)


def install_hint(engine: str) -> str:
    """How to get ``engine`` onto this worker, for error texts."""
    spec = ENGINES.get(engine)
    if spec is None or spec.extra is None:
        return (
            f"this worker has no `{engine}` engine; supported engines are "
            f"{', '.join(sorted(ENGINES))}"
        )
    return (
        f"install it with `pip install 'studio-worker[{spec.extra}]'` and start the "
        f"supervisor with `--engines {engine}`"
    )


def missing_backend(engine: str) -> str | None:
    """None when ``engine``'s library is importable, else the error text naming the extra."""
    spec = ENGINES.get(engine)
    if spec is None:
        return f"unknown engine `{engine}`; choose from {', '.join(sorted(ENGINES))}"
    if spec.backend_package is None:
        return None
    try:
        if importlib.util.find_spec(spec.backend_package) is not None:
            return None
    except (ImportError, ValueError):
        pass
    return (
        f"engine `{engine}` needs the Python package `{spec.backend_package}`, which is not "
        f"installed: run `pip install 'studio-worker[{spec.extra}]'`"
    )
