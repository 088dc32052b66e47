"""What one sd-cpp job asks of stable-diffusion.cpp, decided from the offer alone.

The Rust worker turned an offer into ``sd-cli`` flags (protocol.md §9.3); this module keeps
those semantics as two plans the engine hands to stable-diffusion-cpp-python: a
``LoadPlan`` (the files and load-time options; equal plans share one loaded model) and a
``GenerationPlan`` (the per-job values). It is pure: it never touches the network, the disk
or the inference library, so every precedence rule is testable on its own.

Errors: ``EngineError`` ``modelSource has no diffusion-model / model file`` when the source
names no model to load, and ``lora files of one model must share a directory: ...`` when
the LoRA files were found in more than one directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final, TypeVar

from engines.errors import EngineError
from protocol.tasks import (
    ROLE_DIFFUSION_MODEL,
    ROLE_LORA,
    ROLE_MODEL,
    ROLE_TEXT_ENCODER,
    ROLE_TEXT_ENCODER_VISION,
    ROLE_VAE,
    ImageTask,
    ModelCliDefaults,
    ModelSource,
)

DEFAULT_SIZE_PX: Final = 1024
DEFAULT_STEPS: Final = 8
DEFAULT_CFG_SCALE: Final = 1.0
DEFAULT_STRENGTH: Final = 0.75
DEFAULT_SEED: Final = 42  # sd-cli's default when the task names none
UNCHOSEN_TASK_STEPS: Final = 20  # the task's default: "not chosen", so the model's steps win
_SEED_RANGE: Final = 2**63  # the library takes an int64; the wire carries a u64

NO_MODEL_FILE: Final = "modelSource has no diffusion-model / model file"

# stable-diffusion-cpp-python's own LoRA tag syntax: <lora:name:multiplier>.
_LORA_TAG: Final = re.compile(r"<lora:([^:>]+):([^>]+)>")
_HIGH_NOISE_PREFIX: Final = "|high_noise|"

_Number = TypeVar("_Number", int, float)


@dataclass(frozen=True)
class LoadPlan:
    """Everything ``StableDiffusion(...)`` gets; two jobs with equal plans share a model."""

    model_path: Path | None  # a full checkpoint (role ``model``), only without a diffusion model
    diffusion_model_path: Path | None
    vae_path: Path | None
    llm_path: Path | None  # role ``text-encoder``
    llm_vision_path: Path | None  # role ``text-encoder-vision``
    lora_dir: Path | None  # the directory holding the ``lora`` files
    lora_names: frozenset[str]  # file names and stems a prompt may refer to
    offload_to_cpu: bool
    zero_cond_t: bool

    def files(self) -> tuple[Path, ...]:
        """The weight files the load reads, in a fixed order."""
        paths = (
            self.model_path,
            self.diffusion_model_path,
            self.vae_path,
            self.llm_path,
            self.llm_vision_path,
        )
        return tuple(p for p in paths if p is not None)


@dataclass(frozen=True)
class GenerationPlan:
    """The per-job values; input images are URLs still to be downloaded."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str | None  # None: the library's default for the model
    seed: int
    flow_shift: float | None  # None: the library's automatic shift
    init_image_url: str | None
    mask_url: str | None
    ref_image_url: str | None
    strength: float | None  # img2img only


def check_roles(source: ModelSource) -> None:
    """Refuse a source with nothing to load, before any file is downloaded."""
    roles = {f.role for f in source.files}
    if ROLE_DIFFUSION_MODEL not in roles and ROLE_MODEL not in roles:
        raise EngineError(NO_MODEL_FILE)


def plan_load(paths: Mapping[str, Sequence[Path]], defaults: ModelCliDefaults) -> LoadPlan:
    """Map provisioned files by role onto library arguments (the first file of a role wins).

    ``diffusion-model`` is the diffusion model; without one, a ``model`` file is a full
    checkpoint; ``vae``, ``text-encoder`` (the LLM text encoder) and
    ``text-encoder-vision`` map one to one; ``lora`` files name their directory.
    """
    diffusion = _first(paths, ROLE_DIFFUSION_MODEL)
    checkpoint = None if diffusion is not None else _first(paths, ROLE_MODEL)
    if diffusion is None and checkpoint is None:
        raise EngineError(NO_MODEL_FILE)
    loras = list(paths.get(ROLE_LORA, ()))
    return LoadPlan(
        model_path=checkpoint,
        diffusion_model_path=diffusion,
        vae_path=_first(paths, ROLE_VAE),
        llm_path=_first(paths, ROLE_TEXT_ENCODER),
        llm_vision_path=_first(paths, ROLE_TEXT_ENCODER_VISION),
        lora_dir=lora_directory(loras),
        lora_names=frozenset(n for p in loras for n in (p.name, p.stem)),
        offload_to_cpu=bool(defaults.offload_to_cpu),
        zero_cond_t=bool(defaults.zero_cond_t),
    )


def lora_directory(loras: Sequence[Path]) -> Path | None:
    """The one directory the LoRA files sit in (None without any)."""
    dirs = sorted({p.parent for p in loras})
    if len(dirs) > 1:
        raise EngineError(
            "lora files of one model must share a directory: " + ", ".join(str(d) for d in dirs)
        )
    return dirs[0] if dirs else None


def plan_generation(task: ImageTask, defaults: ModelCliDefaults) -> GenerationPlan:
    """Resolve every value as sd-cli did (protocol.md §9.3).

    Size: the task's if > 0, else the model's if > 0, else 1024. Steps: the task's if > 0
    and not 20, else the model's if > 0, else 8. CFG: the task's if > 0, else the model's if
    > 0, else 1.0. Sampler: the task's, else the model's. A reference image takes precedence
    over an init image; a mask is used only with one of them; ``denoise`` (default 0.75) is
    the img2img strength, clamped to [0, 1].
    """
    ref = task.ref_image_url or None
    init = None if ref else task.init_image_url or None
    mask = (task.mask_url or None) if (ref or init) else None
    strength = None
    if init is not None:
        denoise = DEFAULT_STRENGTH if task.denoise is None else task.denoise
        strength = min(max(denoise, 0.0), 1.0)
    return GenerationPlan(
        prompt=task.prompt,
        negative_prompt=task.negative_prompt or "",
        width=_positive(task.width, defaults.width, DEFAULT_SIZE_PX),
        height=_positive(task.height, defaults.height, DEFAULT_SIZE_PX),
        steps=_positive(
            0 if task.steps == UNCHOSEN_TASK_STEPS else task.steps, defaults.steps, DEFAULT_STEPS
        ),
        cfg_scale=_positive(task.cfg_scale or 0.0, defaults.cfg_scale, DEFAULT_CFG_SCALE),
        sampler=task.sampling_method or defaults.sampling_method or None,
        seed=DEFAULT_SEED if task.seed is None else task.seed % _SEED_RANGE,
        flow_shift=defaults.flow_shift,
        init_image_url=init,
        mask_url=mask,
        ref_image_url=ref,
        strength=strength,
    )


def output_format(ext: str) -> tuple[str, str]:
    """(Pillow format, returned ext) for a task's ``ext``: PNG for ``png``, else WebP."""
    if ext.lower() == "png":
        return "PNG", "png"
    return "WEBP", "webp"


def filter_lora_tags(prompt: str, allowed: frozenset[str]) -> tuple[str, list[str]]:
    """The prompt without ``<lora:...>`` tags that name anything but the model's own LoRAs.

    The library resolves a tag's name as a path (absolute, or relative to the LoRA dir), so
    an unfiltered prompt could make it parse any file on the machine, including the model's
    own weights. Returns the prompt and the names of the dropped tags.
    """
    dropped: list[str] = []

    def keep_or_drop(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix(_HIGH_NOISE_PREFIX)
        if _is_plain_name(name) and name in allowed:
            return match.group(0)
        dropped.append(name)
        return ""

    return _LORA_TAG.sub(keep_or_drop, prompt), dropped


def _is_plain_name(name: str) -> bool:
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        return False
    return not (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute())


def _first(paths: Mapping[str, Sequence[Path]], role: str) -> Path | None:
    found = paths.get(role)
    return found[0] if found else None


def _positive(chosen: _Number, model_default: _Number, fallback: _Number) -> _Number:
    if chosen > 0:
        return chosen
    if model_default > 0:
        return model_default
    return fallback
