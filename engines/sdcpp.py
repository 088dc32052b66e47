"""The sd-cpp engine: image jobs on stable-diffusion.cpp, in process, with the model kept warm.

The Rust worker spawned ``sd-cli`` per job and paid the model load every time; this engine
loads through stable-diffusion-cpp-python and keeps the model until a job needs other files
or other load-time options (``engines.sdcpp_args`` decides both from the offer, with sd-cli's
semantics). A job: provision the model files, download its input images (same https gate,
decoded by content; a failed download fails the job, there is no text-to-image fallback),
load if needed, sample, encode as the task's ``ext``. It must not print to stdout/stderr:
the library's log lines go to the ``engines.sdcpp.native`` logger (warnings and errors, or
everything with ``STUDIO_WORKER_SDCPP_VERBOSE=1``) and its first errors into job failures.

The library cannot stop a generation once started: ``ctx.cancelled`` is honoured between
phases (provisioning, input downloads, load, sampling, encoding), so a cancel during
sampling takes effect when sampling ends.

Errors: ``UnsupportedTask`` for a kind other than image; ``ProvisionError`` for files and
input images; ``EngineError`` (retryable) for a load or a generation the library refused.
"""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import stable_diffusion_cpp as sd_cpp
from PIL import Image

from engines.base import BinaryResult, Engine, EngineResult, JobContext
from engines.cpu_threads import engine_threads
from engines.errors import EngineError, ProvisionError, UnsupportedTask
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
from protocol.tasks import ImageTask, TaskKindName, task_kind

log = logging.getLogger("engines.sdcpp")
native_log = logging.getLogger("engines.sdcpp.native")

VERBOSE_ENV: Final = "STUDIO_WORKER_SDCPP_VERBOSE"
LIBRARY: Final = "stable-diffusion-cpp-python"
_WRAPPER_LOGGER: Final = "stable-diffusion-cpp-python"
_NATIVE_LEVELS: Final = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
_KEPT_ERRORS: Final = 3
_SOURCE_PREFIX: Final = re.compile(r"^[\w.+-]+:\d+\s+-\s+")  # "model.cpp:1035 - "

StepFn = Callable[[int, int], None]


class _NativeHooks:
    """The library's process-wide progress and log callbacks, installed once and kept alive.

    stable-diffusion.cpp holds one progress and one log callback per process. The wrapper's
    ``progress_callback=`` argument installs a ctypes thunk that dies when the call returns,
    while the library keeps calling it (the next model load reports per-tensor progress), so
    this engine never passes it and routes its own long-lived thunk to the current job.
    """

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.errors: list[str] = []  # the first few of the current phase: the cause comes first
        self._on_step: StepFn | None = None
        self._progress_thunk = sd_cpp.sd_progress_callback(self._progress)
        self._log_thunk = sd_cpp.sd_log_callback(self._log)
        sd_cpp.sd_set_progress_callback(self._progress_thunk, ctypes.c_void_p(0))
        sd_cpp.sd_set_log_callback(self._log_thunk, ctypes.c_void_p(0))

    @contextmanager
    def reporting(self, on_step: StepFn | None) -> Iterator[None]:
        """Route progress reports to ``on_step`` and collect fresh errors for the duration."""
        self.errors.clear()
        self._on_step = on_step
        try:
            yield
        finally:
            self._on_step = None

    def first_errors(self) -> str:
        return "; ".join(self.errors)

    def _progress(self, step: int, steps: int, _time: float, _data: object) -> None:
        on_step = self._on_step
        if on_step is None:
            return
        try:
            on_step(step, steps)
        except Exception:  # an exception must not unwind through C frames
            log.exception("progress report failed")

    def _log(self, level: int, text: bytes | None, _data: object) -> None:
        line = (text or b"").decode("utf-8", errors="replace").strip()
        py_level = _NATIVE_LEVELS.get(level, logging.ERROR)
        if py_level >= logging.ERROR and len(self.errors) < _KEPT_ERRORS:
            self.errors.append(_SOURCE_PREFIX.sub("", line))
        if self.verbose or py_level >= logging.WARNING:
            native_log.log(py_level, "%s", line)


_hooks_lock = threading.Lock()
_hooks: _NativeHooks | None = None


def native_hooks() -> _NativeHooks:
    """The process's hooks, installed on first use (the verbosity of the first caller wins)."""
    global _hooks
    with _hooks_lock:
        if _hooks is None:
            verbose = os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")
            _hooks = _NativeHooks(verbose)
        return _hooks


@dataclass(frozen=True)
class _LoadKey:
    plan: LoadPlan
    stamps: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of every weight file


@dataclass(frozen=True)
class _Inputs:
    init: Image.Image | None = None
    mask: Image.Image | None = None
    ref: Image.Image | None = None


class SdCppEngine(Engine):
    """Image jobs for ``modelSource.engine == "sd-cpp"``; one model in memory at a time."""

    name = "sdcpp"

    def __init__(self, models_root: Path, threads: int | None = None) -> None:
        super().__init__()
        self.models_root = models_root
        self._hooks = native_hooks()
        self._model: Any = None
        self._key: _LoadKey | None = None
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

    def close(self) -> None:
        self._unload()

    def _ensure_loaded(self, plan: LoadPlan, ctx: JobContext) -> Any:
        try:
            key = _LoadKey(plan, tuple(_stamp(p) for p in plan.files()))
        except OSError as exc:
            raise EngineError(f"cannot read the sd-cpp model files: {exc}") from exc
        if self._model is not None and self._key == key:
            return self._model
        self._unload()  # before loading, so the old weights' memory is free for the new
        _check_cancelled(ctx)
        names = ", ".join(p.name for p in plan.files())
        ctx.progress("loading", 0, 1, names)
        started = time.monotonic()
        model = self._load(plan, names)
        self._model, self._key = model, key
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

    def _unload(self) -> None:
        model, self._model, self._key = self._model, None, None
        if model is not None:
            model.close()
            del model
            gc.collect()

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


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _arg(path: Path | None) -> str:
    return "" if path is None else str(path)


def _check_cancelled(ctx: JobContext) -> None:
    if ctx.cancelled.is_set():
        raise EngineError("cancelled")


ENGINE_CLASS = SdCppEngine
