"""The synthetic engine: deterministic real bytes for every task kind, no model, no GPU.

A port of the Rust worker's ``SyntheticEngine`` (protocol.md §9.2): every output is a pure
function of the prompt (image, video, LLM), the input URL (STT) or the text (TTS), so CI and
the pool's reliability tests can check results byte for byte. The ``f32`` arithmetic of the
Rust code is reproduced by rounding each step to single precision; ``sin``/``cos`` are the
correctly rounded values, which may differ from a platform ``sinf`` by one unit in the last
place on a few inputs. Fault injection (``engines.faults``) runs before each job; fault
model ids act only when the host's environment has ``STUDIO_WORKER_FAULTS=1``. On a
simulated GPU the engine also loads, keeps and frees "models" in GPU memory like a real
engine (``engines.synthetic_vram``). This module must not import numpy (a test-only
dependency) or any inference library.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import os
import re
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping
from typing import Any, Final, assert_never

import PIL
from PIL import Image, ImageChops, ImageMath

from engines.base import BinaryResult, Engine, EngineResult, JobContext, JsonResult
from engines.errors import EngineError
from engines.faults import FaultOptions, apply_job_fault, model_faults_enabled
from engines.synthetic_vram import SimulatedGpu, raise_oom_fault, transient_bytes
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import (
    AudioSttTask,
    AudioTtsTask,
    ImageTask,
    LlmTask,
    TaskKindName,
    VideoTask,
    prompt_for,
)

IMAGE_SIZE_PX: Final = 512
_HALF_PX: Final = IMAGE_SIZE_PX // 2
_RINGS: Final = 4  # palette colours, one per concentric square ring (the last one is open)
_PHASE_GAINS: Final = (1.0, 0.7, 1.3)  # per channel r, g, b
_WEBP_EFFORT: Final = 50  # libwebp lossless "quality" is compression effort, 0-100
_PNG_COMPRESS_LEVEL: Final = 1

TTS_SAMPLE_RATE_HZ: Final = 22_050
TTS_SAMPLES: Final = TTS_SAMPLE_RATE_HZ  # exactly 1.0 s
_WAV_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")  # RIFF, WAVE, fmt (PCM), data

# A bench/test-only model id: any task with it returns BLOB_BYTES of bytes (ext "bin"), to
# measure and check the path a big binary result takes. Not advertised to the studio.
BLOB_MODEL: Final = "synthetic-blob-8m"
BLOB_BYTES: Final = 8 * 2**20
BLOB_EXT: Final = "bin"

LLM_MODEL: Final = "synthetic-llm"
LLM_COMPLETION_TOKENS: Final = 8
# Rust's char::is_whitespace (Unicode White_Space), which differs from str.split() on \x1c-\x1f.
_RUST_WHITESPACE: Final = re.compile(
    "[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


def _f32(values: Iterable[float]) -> array[float]:
    """Round each value to IEEE single precision, as Rust's f32 arithmetic does.

    One +, -, * or / of two f32 operands done in double and then rounded is exactly the f32
    result, so each Rust operation becomes one double operation and one pass through here.
    """
    return array("f", values)


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


# Per-column / per-row terms of the image, computed once: sin(x/24), cos(y/24), ring index.
_SIN_X: Final = _f32(math.sin(v) for v in _f32(x / 24 for x in range(IMAGE_SIZE_PX)))
_COS_Y: Final = _f32(math.cos(v) for v in _f32(y / 24 for y in range(IMAGE_SIZE_PX)))
# floor(|d| / 256 * 6) is exact in f32 (d/256 is a dyadic fraction), so integers suffice.
_RING_X: Final = bytes(
    min(abs(x - _HALF_PX) * 6 // _HALF_PX, _RINGS - 1) for x in range(IMAGE_SIZE_PX)
)


def render_synthetic_image(prompt: str) -> Image.Image:
    """The 512x512 RGB picture of ``prompt`` (protocol.md §9.2), before encoding.

    Per pixel: ``base[ring] + (phase * gain) as i8 as u8`` with saturation at 255, where
    ``phase = (sin(x/24) + cos(y/24)) * 12`` in f32. Built from whole-image operations in
    Pillow's C code (single-precision ``F`` images), broadcasting the per-row and per-column
    terms, because a per-pixel Python loop takes over 100 ms.
    """
    digest = _sha256(prompt)
    size = (IMAGE_SIZE_PX, IMAGE_SIZE_PX)
    sin_x = Image.frombytes("F", size, _SIN_X.tobytes() * IMAGE_SIZE_PX)
    cos_y = Image.frombytes("F", size, _COS_Y.tobytes() * IMAGE_SIZE_PX).transpose(
        Image.Transpose.TRANSPOSE
    )
    ring_x = Image.frombytes("L", size, _RING_X * IMAGE_SIZE_PX)
    ring = ImageChops.lighter(ring_x, ring_x.transpose(Image.Transpose.TRANSPOSE))
    bands = []
    for channel, gain in enumerate(_PHASE_GAINS):
        palette_lut = [digest[3 * r + channel] for r in range(_RINGS)] + [0] * (256 - _RINGS)
        base = ring.point(palette_lut)
        bands.append(
            ImageMath.lambda_eval(
                functools.partial(_channel, gain=gain), s=sin_x, c=cos_y, base=base
            )
        )
    return Image.merge("RGB", bands)


def _channel(env: dict[str, Any], gain: float) -> Any:
    """One colour band in ``ImageMath`` terms; ``int`` truncates toward zero like ``as``."""
    phase = (env["s"] + env["c"]) * 12.0
    if gain != 1.0:
        phase = phase * gain  # gain is rounded to f32 like Rust's literal
    # (f as i8): truncate, saturate to [-128, 127]; (as u8): two's complement.
    addend = env["int"](env["min"](env["max"](phase, -128.0), 127.0)) & 0xFF
    return env["convert"](env["min"](env["base"] + addend, 255), "L")


def encode_image(image: Image.Image, ext: str) -> bytes:
    """Lossless WebP when ``ext == "webp"`` (as the Rust ``image`` crate writes), else PNG.

    Both at a low compression effort: libwebp's default lossless effort alone takes ~100 ms
    for this image, and these bytes only need to be valid, small enough and deterministic.
    """
    out = io.BytesIO()
    if ext == "webp":
        image.save(out, format="WEBP", lossless=True, method=0, quality=_WEBP_EFFORT)
    else:
        image.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return out.getvalue()


def synthetic_image(prompt: str, ext: str) -> bytes:
    """The encoded synthetic image of ``prompt``; same prompt and ext, same bytes."""
    return encode_image(render_synthetic_image(prompt), ext)


def synthetic_video(prompt: str) -> bytes:
    """The synthetic "video": the prompt's image as a single-frame WebP."""
    return synthetic_image(prompt, "webp")


def count_words(text: str) -> int:
    """Rust's ``str::split_whitespace().count()``."""
    return sum(1 for word in _RUST_WHITESPACE.split(text) if word)


def synthetic_llm(task: LlmTask) -> dict[str, Any]:
    """A chat completion whose reply names the prompt's hash (the ``system`` param is unused)."""
    prompt = "\n".join(f"{m.role}: {m.content}" for m in task.messages)
    words = count_words(prompt)
    return {
        "object": "chat.completion",
        "model": LLM_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"[synthetic] reply to prompt #{_sha256(prompt).hex()[:16]}",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": words,
            "completion_tokens": LLM_COMPLETION_TOKENS,
            "total_tokens": words + LLM_COMPLETION_TOKENS,
        },
    }


def synthetic_stt(task: AudioSttTask) -> dict[str, Any]:
    """A Whisper-style transcript naming the input URL's hash."""
    return {
        "text": f"[synthetic] transcript of {_sha256(task.input_url).hex()[:16]}",
        "language": task.language if task.language is not None else "en",
        "duration": 1.0,
    }


@functools.lru_cache(maxsize=1)
def synthetic_blob(prompt: str) -> bytes:
    """``BLOB_BYTES`` made of the prompt's SHA-256 repeated; cached, so a benchmark of the
    result path measures the transfer, not the fill."""
    digest = _sha256(prompt)
    return digest * (BLOB_BYTES // len(digest))


def synthetic_tts(text: str) -> bytes:
    """1.0 s of 16-bit mono PCM at 22050 Hz: a sine between 220 and 880 Hz set by the text.

    Sample n is ``trunc(sin(n / 22050 * 2 * pi * f) * 0.4 * 32767)`` evaluated left to right
    in f32, with ``f = 220 + digest[0] * (660 / 255)``, as the Rust worker computes it.
    """
    (step,) = _f32([660 / 255])
    (pi,) = _f32([math.pi])
    (freq_hz,) = _f32([220.0 + _sha256(text)[0] * step])
    t = _f32(n / TTS_SAMPLE_RATE_HZ for n in range(TTS_SAMPLES))
    angle = _f32(v * freq_hz for v in _f32(v * pi for v in _f32(v * 2.0 for v in t)))
    (gain,) = _f32([0.4])
    scaled = _f32(v * 32767.0 for v in _f32(v * gain for v in _f32(map(math.sin, angle))))
    # (f as i16) saturates; |v| <= 0.4 * 32767 here, so the clamp never bites.
    samples = array("h", (max(-32768, min(32767, int(v))) for v in scaled))
    if sys.byteorder == "big":  # pragma: no cover - WAV samples are little-endian
        samples.byteswap()
    data = samples.tobytes()
    return wav_header(len(data)) + data


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte RIFF/WAVE header of 16-bit mono PCM at 22050 Hz."""
    channels, bits = 1, 16
    block_align = channels * bits // 8
    return _WAV_HEADER.pack(
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # WAVE_FORMAT_PCM
        channels,
        TTS_SAMPLE_RATE_HZ,
        TTS_SAMPLE_RATE_HZ * block_align,
        block_align,
        bits,
        b"data",
        data_bytes,
    )


class SyntheticEngine(Engine):
    """Serves every kind for ``modelSource.engine == "synthetic"`` offers, whatever the model.

    Routing by source engine is the supervisor's job; model ids named by ``FaultModel`` make
    the process misbehave before the output is produced when ``environ`` has
    ``STUDIO_WORKER_FAULTS=1`` (or ``faults.model_ids`` is set), as do the per-process
    ``faults``; ``BLOB_MODEL`` returns ``synthetic_blob`` for any task.
    """

    name = "synthetic"

    def __init__(
        self, faults: FaultOptions | None = None, environ: Mapping[str, str] = os.environ
    ) -> None:
        super().__init__()
        faults = faults if faults is not None else FaultOptions()
        if model_faults_enabled(environ):
            faults = dataclasses.replace(faults, model_ids=True)
        self.faults = faults
        self.jobs_started = 0
        # The simulated GPU this host is pinned to (None: the CPU, nothing to load).
        self.gpu = SimulatedGpu.from_environment(self.faults)

    def advertised_models(self) -> dict[TaskKindName, list[str]]:
        return {
            "image": ["synthetic", "synthetic-image"],
            "llm": ["synthetic", "synthetic-llm"],
            "audio_stt": ["synthetic", "synthetic-stt"],
            "audio_tts": ["synthetic", "synthetic-tts"],
            "video": ["synthetic", "synthetic-video"],
        }

    def library_versions(self) -> dict[str, str]:
        return {"pillow": PIL.__version__}

    def compute_device(self) -> ComputeDevice:
        return ComputeDevice("cpu") if self.gpu is None else self.gpu.compute_device()

    def resident(self) -> list[ResidentModel]:
        return [] if self.gpu is None else self.gpu.resident()

    def unload(self, load_key: str) -> bool:
        return self.gpu is not None and self.gpu.unload(load_key)

    def probe_device(self, nbytes: int) -> str:
        return super().probe_device(nbytes) if self.gpu is None else self.gpu.probe(nbytes)

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()

    def run(self, ctx: JobContext) -> EngineResult:
        earlier_jobs = self.jobs_started
        self.jobs_started += 1
        apply_job_fault(ctx.model, ctx, self.faults, earlier_jobs)
        _check_cancelled(ctx)
        if self.gpu is None:
            raise_oom_fault(ctx, transient_bytes(ctx.vram_estimate_bytes), self.faults)
            return self._produce(ctx)
        if self.gpu.load(ctx, self.max_warm_models):
            self.model_loads += 1
        with self.gpu.generating(ctx):
            return self._produce(ctx)

    def _produce(self, ctx: JobContext) -> EngineResult:
        if ctx.model == BLOB_MODEL:
            return BinaryResult(synthetic_blob(prompt_for(ctx.task)), BLOB_EXT)
        ctx.progress("generating", 0, 2, "")
        result: EngineResult
        match ctx.task:
            case ImageTask():  # encoded as the requested ext says, which is returned as-is
                data = _image_with_progress(ctx, ctx.task.prompt, ctx.task.ext)
                result = BinaryResult(data, ctx.task.ext)
            case VideoTask():  # seconds, fps, size and ext are ignored
                result = BinaryResult(_image_with_progress(ctx, ctx.task.prompt, "webp"), "webp")
            case LlmTask():
                result = JsonResult(synthetic_llm(ctx.task))
            case AudioSttTask():
                result = JsonResult(synthetic_stt(ctx.task))
            case AudioTtsTask():
                result = BinaryResult(synthetic_tts(ctx.task.text), "wav")
            case _:
                assert_never(ctx.task)
        ctx.progress("generating", 2, 2, "")
        return result


def _image_with_progress(ctx: JobContext, prompt: str, ext: str) -> bytes:
    image = render_synthetic_image(prompt)
    ctx.progress("generating", 1, 2, "")
    _check_cancelled(ctx)
    return encode_image(image, ext)


def _check_cancelled(ctx: JobContext) -> None:
    if ctx.cancelled.is_set():
        raise EngineError("cancelled")
