"""The sd-cpp engine: image jobs on stable-diffusion.cpp, in process, with the model kept warm.

The Rust worker spawned ``sd-cli`` per job and paid the model load every time; this engine
loads through stable-diffusion-cpp-python and keeps up to ``max_warm_models`` models, each
under the job's load key (``engines.load_keys``: the files and load-time options that
``engines.sdcpp_args`` reads from the offer, with sd-cli's semantics), evicting the least
recently used before a load that would exceed that; a model whose files changed on disk is
reloaded. A job: provision the model files, download its input images (same https gate,
decoded by content; a failed download fails the job, there is no text-to-image fallback),
load if needed, sample, encode as the task's ``ext``. It must not print to stdout/stderr:
the library's log lines go to the ``engines.sdcpp.native`` logger (``engines.sdcpp_hooks``)
and its first errors into job failures.

The library cannot stop a generation once started: ``ctx.cancelled`` is honoured between
phases (provisioning, input downloads, load, sampling, encoding), so a cancel during
sampling takes effect when sampling ends.

Errors: ``UnsupportedTask`` for a kind other than image; ``ProvisionError`` for files and
input images; ``EngineError`` (retryable) for a load or a generation the library refused.
"""

from __future__ import annotations

import gc
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import stable_diffusion_cpp as sd_cpp
from PIL import Image

from engines.base import BinaryResult, Engine, EngineResult, JobContext
from engines.cpu_threads import engine_threads
from engines.errors import EngineError, ProvisionError, UnsupportedTask
from engines.ggml_device import GgmlRegistry, compute_device, probe_device
from engines.provision import download_input_image, ensure_model_files
from engines.sdcpp_args import (
    GenerationPlan,
    LoadPlan,
    check_roles,
    filter_lora_tags,
    output_format,
    plan_generation,
    plan_load,
)
from engines.sdcpp_hooks import StepFn, native_hooks
from engines.warm_models import WarmModels
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import ImageTask, TaskKindName, task_kind

LIBRARY: Final = "stable-diffusion-cpp-python"
_WRAPPER_LOGGER: Final = "stable-diffusion-cpp-python"


@dataclass(frozen=True)
class _Identity:
    """What a loaded model was loaded from: equal identities share the model."""

    plan: LoadPlan
    stamps: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of every weight file


@dataclass(frozen=True)
class _Loaded:
    model: Any  # sd_cpp.StableDiffusion
    identity: _Identity


@dataclass(frozen=True)
class _Inputs:
    init: Image.Image | None = None
    mask: Image.Image | None = None
    ref: Image.Image | None = None


class SdCppEngine(Engine):
    """Image jobs for ``modelSource.engine == "sd-cpp"``; ``max_warm_models`` kept loaded."""

    name = "sdcpp"

    def __init__(self, models_root: Path, threads: int | None = None) -> None:
        super().__init__()
        self.models_root = models_root
        self._hooks = native_hooks()
        self._warm: WarmModels[_Loaded] = WarmModels(_free)
        self.threads = threads if threads is not None else engine_threads()

    def advertised_models(self) -> dict[TaskKindName, list[str]]:
        return {"image": ["sd-cpp:*"]}

    def library_versions(self) -> dict[str, str]:
        return {LIBRARY: str(sd_cpp.__version__)}

    def run(self, ctx: JobContext) -> EngineResult:
        task = ctx.task
        if not isinstance(task, ImageTask):
            raise UnsupportedTask(self.name, task_kind(task))
        source = ctx.model_source
        check_roles(source)
        plan = plan_generation(task, source.cli_defaults)
        _check_cancelled(ctx)
        paths = ensure_model_files(
            source,
            ctx.model,
            ctx.models_root,
            layout="sdcpp",
            on_progress=lambda name, done, total: ctx.progress("downloading", done, total, name),
            cancel=ctx.cancelled,
        )
        load_plan = plan_load(paths, source.cli_defaults)
        with tempfile.TemporaryDirectory(prefix="studio-worker-sdcpp-") as tmp:
            inputs = _fetch_inputs(plan, Path(tmp), ctx)
        model = self._ensure_loaded(load_plan, ctx)
        _check_cancelled(ctx)
        image = self._generate(model, plan, load_plan, inputs, ctx)
        _check_cancelled(ctx)
        return _encode(image, plan, task.ext, ctx)

    def resident(self) -> list[ResidentModel]:
        return self._warm.resident()

    def unload(self, load_key: str) -> bool:
        return self._warm.discard(load_key)

    def compute_device(self) -> ComputeDevice:
        return compute_device(GgmlRegistry(sd_cpp.stable_diffusion_cpp._lib))

    def probe_device(self, nbytes: int) -> str:
        registry = GgmlRegistry(sd_cpp.stable_diffusion_cpp._lib)
        with self._hooks.reporting(None):
            return probe_device(registry, nbytes, self._hooks.first_errors)

    def close(self) -> None:
        self._warm.clear()

    def _ensure_loaded(self, plan: LoadPlan, ctx: JobContext) -> Any:
        key = ctx.key_for(self.name)
        try:
            stamps = tuple(_stamp(p) for p in plan.files())
        except OSError as exc:
            raise EngineError(f"cannot read the sd-cpp model files: {exc}") from exc
        identity = _Identity(plan, stamps)
        loaded = self._warm.use(key)
        if loaded is not None and loaded.identity == identity:
            return loaded.model
        self._warm.discard(key)  # its files changed on disk since it was loaded
        # Before asking and loading, so the evicted weights' memory is free for the new.
        self._warm.make_room(self.max_warm_models)
        _check_cancelled(ctx)
        size = sum(size for _, size, _ in stamps)
        ctx.before_load(size)
        names = ", ".join(p.name for p in plan.files())
        ctx.progress("loading", 0, 1, names)
        started = time.monotonic()
        model = self._load(plan, names)
        self._warm.add(key, _Loaded(model, identity), size, files=plan.files())
        self.model_loads += 1
        ctx.progress("loading", 1, 1, names)
        ctx.log(
            "info", f"loaded {names} threads={self.threads} in {time.monotonic() - started:.1f} s"
        )
        return model

    def _load(self, plan: LoadPlan, names: str) -> Any:
        with self._hooks.reporting(None):
            try:
                # verbose=True only stops the wrapper from pointing the whole process's
                # stdout/stderr at /dev/null while it loads and samples; the library's own
                # lines go through our log hook either way.
                model = sd_cpp.StableDiffusion(
                    model_path=_arg(plan.model_path),
                    diffusion_model_path=_arg(plan.diffusion_model_path),
                    vae_path=_arg(plan.vae_path),
                    llm_path=_arg(plan.llm_path),
                    llm_vision_path=_arg(plan.llm_vision_path),
                    lora_model_dir=_arg(plan.lora_dir),
                    offload_params_to_cpu=plan.offload_to_cpu,
                    qwen_image_zero_cond_t=plan.zero_cond_t,
                    diffusion_flash_attn=True,  # sd-cli always got --diffusion-fa
                    n_threads=self.threads,
                    verbose=True,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                raise EngineError(f"cannot load the sd-cpp model ({names}): {exc}") from exc
            finally:
                # The wrapper gates its own print()s (to stdout) on this logger's level.
                logging.getLogger(_WRAPPER_LOGGER).setLevel(logging.ERROR)
            if not _has_context(model):
                _discard_failed(model)
                reason = self._hooks.first_errors() or "stable-diffusion.cpp returned no context"
                raise EngineError(f"cannot load the sd-cpp model ({names}): {reason}")
        return model

    def _generate(
        self, model: Any, plan: GenerationPlan, load: LoadPlan, inputs: _Inputs, ctx: JobContext
    ) -> Image.Image:
        prompt, dropped = filter_lora_tags(plan.prompt, load.lora_names)
        if dropped:
            ctx.log("warn", f"dropped lora tags naming no lora file of this model: {dropped}")
        kwargs: dict[str, Any] = {}
        if plan.flow_shift is not None:
            kwargs["flow_shift"] = plan.flow_shift
        if inputs.ref is not None:
            kwargs["ref_images"] = [inputs.ref]
        elif inputs.init is not None:
            kwargs["init_image"] = inputs.init
            kwargs["strength"] = plan.strength
        if inputs.mask is not None:
            kwargs["mask_image"] = inputs.mask
        started = time.monotonic()
        with self._hooks.reporting(_step_reporter(ctx)):
            try:
                images = model.generate_image(
                    prompt=prompt,
                    negative_prompt=plan.negative_prompt,
                    width=plan.width,
                    height=plan.height,
                    cfg_scale=plan.cfg_scale,
                    sample_method=plan.sampler,
                    sample_steps=plan.steps,
                    seed=plan.seed,
                    **kwargs,
                )
            except (ValueError, RuntimeError) as exc:
                detail = self._hooks.first_errors()
                raise EngineError(
                    f"image generation failed: {exc}" + (f" ({detail})" if detail else "")
                ) from exc
        if not images:
            detail = self._hooks.first_errors() or "the library returned no image"
            raise EngineError(f"image generation failed: {detail}")
        ctx.log("info", f"sampled {plan.steps} steps in {time.monotonic() - started:.1f} s")
        image: Image.Image = images[0]
        return image


def _step_reporter(ctx: JobContext) -> StepFn:
    """One ``generating`` report per sampling step (the library also reports step 0)."""
    last = (0, 0)

    def on_step(step: int, steps: int) -> None:
        nonlocal last
        if step < 1 or (step, steps) == last:
            return
        last = (step, steps)
        ctx.progress("generating", step, steps, "")

    return on_step


def _fetch_inputs(plan: GenerationPlan, tmp: Path, ctx: JobContext) -> _Inputs:
    def fetch(url: str | None, stem: str, mode: str) -> Image.Image | None:
        if url is None:
            return None
        _check_cancelled(ctx)
        path = download_input_image(url, tmp, stem, cancel=ctx.cancelled)
        try:
            with Image.open(path) as img:
                return img.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ProvisionError(f"input image {url} cannot be decoded: {exc}") from exc

    return _Inputs(
        init=fetch(plan.init_image_url, "init", "RGB"),
        mask=fetch(plan.mask_url, "mask", "L"),
        ref=fetch(plan.ref_image_url, "ref", "RGB"),
    )


def _encode(image: Image.Image, plan: GenerationPlan, ext: str, ctx: JobContext) -> BinaryResult:
    fmt, out_ext = output_format(ext)
    rgb = image.convert("RGB")
    rgb.info.clear()  # the wrapper files every argument there, local paths included
    if rgb.size != (plan.width, plan.height):
        # stable-diffusion.cpp rounds sizes up to what the model can sample (64 for SD1.x).
        ctx.log(
            "warn",
            f"the model made {rgb.width}x{rgb.height}; resized to the {plan.width}x{plan.height}"
            " asked for",
        )
        rgb = rgb.resize((plan.width, plan.height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "WEBP":
        rgb.save(buf, format="WEBP", lossless=True)
    else:
        rgb.save(buf, format="PNG")
    return BinaryResult(buf.getvalue(), out_ext)


def _has_context(model: Any) -> bool:
    """Whether the load produced a context.

    stable-diffusion-cpp-python 0.4.7 tests ``new_sd_ctx``'s result with ``is None``, but
    ctypes hands back a NULL pointer object, so a failed load (a tensor of the wrong shape, a
    file that is no model) looks like a success; freeing it later calls ``free_sd_ctx(NULL)``,
    which kills the process with SIGSEGV.
    """
    return bool(getattr(getattr(model, "_model", None), "model", None))


def _discard_failed(model: Any) -> None:
    inner = getattr(model, "_model", None)
    if inner is not None:
        inner.model = None  # nothing to free, and free_sd_ctx(NULL) would segfault
    model.close()


def _free(key: str, loaded: _Loaded) -> None:
    del key
    loaded.model.close()
    del loaded
    gc.collect()


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _arg(path: Path | None) -> str:
    return "" if path is None else str(path)


def _check_cancelled(ctx: JobContext) -> None:
    if ctx.cancelled.is_set():
        raise EngineError("cancelled")


ENGINE_CLASS = SdCppEngine
