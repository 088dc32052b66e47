"""Parse ``--engines sdcpp@0,sdcpp@1,llama@1`` into slot specs (pure). A list that does not
parse raises SlotSpecError (supervisor/errors.py, exit 2) naming the entry and the choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from engines.catalog import ENGINES
from supervisor.errors import SlotSpecError


@dataclass(frozen=True)
class SlotSpec:
    engine: str
    gpu: int | None  # None = the default device (no *_VISIBLE_DEVICES override)
    index: int  # n-th slot of this engine, for unique ids

    @property
    def slot_id(self) -> str:
        where = "default" if self.gpu is None else f"gpu{self.gpu}"
        return f"{self.engine}-{where}-{self.index}"


ENGINES_FLAG: Final = "--engines"


def parse_engines(
    text: str | list[str], *, with_synthetic: bool = True, source: str = ENGINES_FLAG
) -> list[SlotSpec]:
    """Slots for an ``--engines`` value. ``synthetic`` is added unless listed, excluded with
    ``-synthetic``, or ``with_synthetic`` is False. Raises SlotSpecError naming ``source``
    (where the list came from: the flag, or the config's ``engines`` key)."""
    items = text if isinstance(text, list) else text.split(",")
    choices = ", ".join(sorted(ENGINES))
    specs: list[SlotSpec] = []
    counts: dict[str, int] = {}
    exclude_synthetic = False
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        if raw in ("-synthetic", "!synthetic", "no-synthetic"):
            exclude_synthetic = True
            continue
        name, at, gpu_text = raw.partition("@")
        if name not in ENGINES:
            raise SlotSpecError(f"unknown engine `{name}` in {source}; choose from {choices}")
        gpu: int | None = None
        if at:
            if not (gpu_text.isascii() and gpu_text.isdigit()):
                raise SlotSpecError(
                    f"bad GPU index in `{raw}` ({source}): expected engine@N with N >= 0, "
                    f"e.g. `{name}@0`, or `{name}` for the default device"
                )
            gpu = int(gpu_text)
        specs.append(SlotSpec(name, gpu, counts.get(name, 0)))
        counts[name] = counts.get(name, 0) + 1
    if with_synthetic and not exclude_synthetic and "synthetic" not in counts:
        specs.append(SlotSpec("synthetic", None, 0))
    if not specs:
        raise SlotSpecError(f"no engines selected by {source}; name at least one of {choices}")
    return specs


def gpu_env(gpu: int | None) -> dict[str, str]:
    """Environment that pins a host to one GPU for CUDA, ROCm/HIP and Vulkan backends."""
    if gpu is None:
        return {}
    index = str(gpu)
    return {
        "CUDA_VISIBLE_DEVICES": index,
        "HIP_VISIBLE_DEVICES": index,
        "ROCR_VISIBLE_DEVICES": index,
        "GGML_VK_VISIBLE_DEVICES": index,
    }
