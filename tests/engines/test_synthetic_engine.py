"""The synthetic engine's outputs against protocol.md §9.2, run in-process on real bytes."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from engines.base import BinaryResult, JobContext, JsonResult
from engines.errors import EngineError
from engines.synthetic import (
    SyntheticEngine,
    count_words,
    render_synthetic_image,
    synthetic_image,
    synthetic_tts,
    synthetic_video,
)
from protocol.tasks import (
    TASK_KINDS,
    AudioSttTask,
    AudioTtsTask,
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelSource,
    Task,
    VideoTask,
)

SIZE = 512
ProgressCall = tuple[str, int, int, str]


def make_ctx(
    task: Task, model: str = "synthetic", *, progress: list[ProgressCall] | None = None
) -> JobContext:
    source = ModelSource(
        engine="synthetic",
        files=[],
        cli_defaults=ModelCliDefaults(cfg_scale=1.0, steps=1, width=SIZE, height=SIZE),
    )
    ctx = JobContext(
        job_id="job-1", model=model, task=task, model_source=source, models_root=Path()
    )
    if progress is not None:
        ctx.progress = lambda phase, step, total, message: progress.append(
            (phase, step, total, message)
        )
    return ctx


def run_binary(task: Task) -> BinaryResult:
    result = SyntheticEngine().run(make_ctx(task))
    assert isinstance(result, BinaryResult)
    return result


def run_json(task: Task) -> object:
    result = SyntheticEngine().run(make_ctx(task))
    assert isinstance(result, JsonResult)
    return result.value


def sha_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def reference_pixels(prompt: str) -> np.ndarray:
    """§9.2's formula in numpy float32, written independently of the engine."""
    digest = hashlib.sha256(prompt.encode()).digest()
    palette = np.frombuffer(digest[:12], dtype=np.uint8).reshape(4, 3).astype(np.int64)
    coords = np.arange(SIZE)
    xs, ys = np.meshgrid(coords, coords)  # xs[y, x] == x
    cheb = np.maximum(abs(xs - 256), abs(ys - 256)).astype(np.float32) / np.float32(256)
    ring = np.minimum(np.floor(cheb * np.float32(6)).astype(np.int64), 3)
    scaled = coords.astype(np.float32) / np.float32(24)
    sin_x = np.sin(scaled.astype(np.float64)).astype(np.float32)
    cos_y = np.cos(scaled.astype(np.float64)).astype(np.float32)
    phase = (sin_x[None, :] + cos_y[:, None]) * np.float32(12)
    out = np.empty((SIZE, SIZE, 3), dtype=np.int64)
    for channel, gain in enumerate((None, np.float32(0.7), np.float32(1.3))):
        value = phase if gain is None else phase * gain
        as_u8 = np.clip(np.trunc(value), -128, 127).astype(np.int64) & 0xFF
        out[..., channel] = np.minimum(palette[ring, channel] + as_u8, 255)
    return out.astype(np.uint8)


# --- image -------------------------------------------------------------------------------


def test_image_webp_is_lossless_webp_512_rgb() -> None:
    result = run_binary(ImageTask(prompt="a red fox", ext="webp"))
    assert result.ext == "webp"
    assert result.data[:4] == b"RIFF"
    assert result.data[8:12] == b"WEBP"
    assert result.data[12:16] == b"VP8L"  # the lossless bitstream
    with Image.open(io.BytesIO(result.data)) as img:
        assert img.format == "WEBP"
        assert img.size == (SIZE, SIZE)
        assert img.mode == "RGB"


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_image_other_ext_is_png_with_ext_unchanged(ext: str) -> None:
    result = run_binary(ImageTask(prompt="a red fox", ext=ext))
    assert result.ext == ext
    assert result.data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(result.data)) as img:
        assert img.format == "PNG"
        assert img.size == (SIZE, SIZE)
        assert img.mode == "RGB"


def test_image_size_ignores_requested_dimensions() -> None:
    result = run_binary(ImageTask(prompt="tiny", width=64, height=96, steps=2, ext="png"))
    with Image.open(io.BytesIO(result.data)) as img:
        assert img.size == (SIZE, SIZE)


def test_image_pixels_follow_the_formula() -> None:
    prompt = "pixel check"
    expected = reference_pixels(prompt)
    assert np.array_equal(np.asarray(render_synthetic_image(prompt)), expected)
    for ext in ("webp", "png"):  # both containers are lossless
        with Image.open(io.BytesIO(synthetic_image(prompt, ext))) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), expected)


def test_negative_phase_wraps_like_rust_i8_to_u8() -> None:
    # Pixel (x=0, y=256): ring 3 (cheb = 1), phase = (sin 0 + cos(256/24)) * 12 < 0.
    prompt = "wraparound"
    digest = hashlib.sha256(prompt.encode()).digest()
    phase = (math.sin(0) + math.cos(256 / 24)) * 12
    assert -4 < phase < -3
    expected = [
        min(255, digest[9 + c] + ((math.trunc(phase * gain) + 256) & 0xFF))
        for c, gain in enumerate((1.0, 0.7, 1.3))
    ]
    pixel = render_synthetic_image(prompt).getpixel((0, 256))
    assert pixel == tuple(expected)


def test_image_is_deterministic_and_prompt_dependent() -> None:
    first = synthetic_image("same prompt", "webp")
    assert synthetic_image("same prompt", "webp") == first
    assert synthetic_image("same prompt", "png") == synthetic_image("same prompt", "png")
    assert synthetic_image("other prompt", "webp") != first


def test_image_reports_progress_to_completion() -> None:
    progress: list[ProgressCall] = []
    SyntheticEngine().run(make_ctx(ImageTask(prompt="p"), progress=progress))
    assert len(progress) >= 2
    for phase, step, total, _ in progress:
        assert phase == "generating"
        assert 0 <= step <= total
    assert progress[-1] == ("generating", 2, 2, "")


def test_cancelled_job_raises_before_generating() -> None:
    ctx = make_ctx(ImageTask(prompt="p"))
    ctx.cancelled.set()
    with pytest.raises(EngineError, match="cancelled"):
        SyntheticEngine().run(ctx)


# --- video -------------------------------------------------------------------------------


def test_video_is_the_prompt_image_as_single_frame_webp() -> None:
    result = run_binary(VideoTask(prompt="a tiny dragon", seconds=3.0, width=256, ext="mp4"))
    assert result.ext == "webp"
    assert result.data == synthetic_video("a tiny dragon")
    assert result.data == synthetic_image("a tiny dragon", "webp")
    with Image.open(io.BytesIO(result.data)) as img:
        assert img.format == "WEBP"
        assert img.size == (SIZE, SIZE)
        assert getattr(img, "n_frames", 1) == 1


# --- llm ---------------------------------------------------------------------------------


def test_llm_single_message_exact_response() -> None:
    value = run_json(LlmTask(messages=[ChatMessage(role="user", content="hi")]))
    assert value == {
        "object": "chat.completion",
        "model": "synthetic-llm",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"[synthetic] reply to prompt #{sha_hex('user: hi')[:16]}",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10},
    }


def test_llm_prompt_joins_messages_and_ignores_system_param() -> None:
    task = LlmTask(
        system="never included",
        messages=[
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content="what  is\tthe capital?"),
        ],
    )
    value = run_json(task)
    prompt = "system: be brief\nuser: what  is\tthe capital?"
    assert isinstance(value, dict)
    assert value["choices"][0]["message"]["content"].endswith(sha_hex(prompt)[:16])
    assert value["usage"] == {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16}
    assert value["model"] == "synthetic-llm"


def test_llm_without_messages_counts_zero_words() -> None:
    value = run_json(LlmTask(messages=[]))
    assert isinstance(value, dict)
    assert value["usage"]["prompt_tokens"] == 0
    assert value["choices"][0]["message"]["content"].endswith(sha_hex("")[:16])


def test_word_count_uses_rust_whitespace() -> None:
    assert count_words("") == 0
    assert count_words("  a \n b\u3000c\u00a0d  ") == 4
    assert count_words("a\x1cb") == 1  # str.split() would say 2; Rust's split_whitespace says 1


# --- stt ---------------------------------------------------------------------------------


def test_stt_defaults_language_to_en() -> None:
    url = "https://example.com/audio.wav"
    assert run_json(AudioSttTask(input_url=url)) == {
        "text": f"[synthetic] transcript of {sha_hex(url)[:16]}",
        "language": "en",
        "duration": 1.0,
    }


def test_stt_keeps_given_language() -> None:
    value = run_json(AudioSttTask(input_url="u", language="nl"))
    assert isinstance(value, dict)
    assert value["language"] == "nl"


# --- tts ---------------------------------------------------------------------------------


def reference_samples(text: str) -> np.ndarray:
    """§9.2's sine in numpy float32, evaluated left to right like the Rust worker."""
    digest = hashlib.sha256(text.encode()).digest()
    freq = np.float32(220) + np.float32(digest[0]) * (np.float32(660) / np.float32(255))
    t = np.arange(22050, dtype=np.float32) / np.float32(22050)
    angle = t * np.float32(2) * np.float32(np.pi) * freq
    amplitude = np.sin(angle.astype(np.float64)).astype(np.float32)
    samples: np.ndarray = np.trunc(amplitude * np.float32(0.4) * np.float32(32767))
    return samples.astype(np.int16)


def test_tts_wav_header_fields() -> None:
    result = run_binary(AudioTtsTask(text="hello world", ext="mp3"))
    assert result.ext == "wav"
    data = result.data
    assert len(data) == 44 + 22050 * 2
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", data[:44])
    assert fields == (
        b"RIFF",
        36 + 22050 * 2,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        22050,
        22050 * 2,
        2,
        16,
        b"data",
        22050 * 2,
    )
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 22050
        assert wav.getnframes() == 22050


def test_tts_samples_follow_the_formula() -> None:
    text = "hello world"
    samples = np.frombuffer(synthetic_tts(text)[44:], dtype="<i2")
    assert np.array_equal(samples, reference_samples(text))
    # The spec's formula in double precision agrees to within the f32 rounding of the angle.
    freq = 220 + hashlib.sha256(text.encode()).digest()[0] * 660 / 255
    exact = [math.trunc(math.sin(2 * math.pi * freq * n / 22050) * 0.4 * 32767) for n in range(8)]
    assert samples[0] == 0
    assert [int(s) for s in samples[:8]] == pytest.approx(exact, abs=1)
    assert synthetic_tts(text) == synthetic_tts(text)
    assert synthetic_tts("other text") != synthetic_tts(text)


# --- engine surface ----------------------------------------------------------------------


def test_advertised_models_cover_every_kind_without_wildcard() -> None:
    advertised = SyntheticEngine().advertised_models()
    assert set(advertised) == set(TASK_KINDS)
    suffix = {
        "image": "image",
        "llm": "llm",
        "audio_stt": "stt",
        "audio_tts": "tts",
        "video": "video",
    }
    for kind, models in advertised.items():
        assert models == ["synthetic", f"synthetic-{suffix[kind]}"]
        assert "*" not in models


def test_name_and_library_versions() -> None:
    engine = SyntheticEngine()
    assert engine.name == "synthetic"
    assert engine.library_versions() == {"pillow": PIL.__version__}


def test_any_model_id_is_served() -> None:
    result = SyntheticEngine().run(make_ctx(ImageTask(prompt="p", ext="png"), model="whatever"))
    assert isinstance(result, BinaryResult)
    assert result.ext == "png"
