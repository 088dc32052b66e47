"""Job payloads: the five task kinds, the model source and the pure helpers around them.

Wire names are the studio's (camelCase fields, snake_case kind values). Frames from the
studio tolerate unknown fields; optional fields are omitted when absent and an explicit
``null`` parses as absent. ``engine`` and ``role`` stay plain strings so an engine this
worker does not know is refused with a clear failure instead of a parse error that would
drop the whole session.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

TaskKindName = Literal["image", "llm", "audio_stt", "audio_tts", "video"]
TASK_KINDS: Final[tuple[TaskKindName, ...]] = ("image", "llm", "audio_stt", "audio_tts", "video")

ENGINE_SD_CPP: Final = "sd-cpp"
ENGINE_LLAMA_CPP: Final = "llama-cpp"
ENGINE_ONNX: Final = "onnx"
ENGINE_PARAKEET: Final = "parakeet"
ENGINE_SYNTHETIC: Final = "synthetic"

ROLE_DIFFUSION_MODEL: Final = "diffusion-model"
ROLE_TEXT_ENCODER: Final = "text-encoder"
ROLE_TEXT_ENCODER_VISION: Final = "text-encoder-vision"
ROLE_VAE: Final = "vae"
ROLE_LORA: Final = "lora"
ROLE_MODEL: Final = "model"

PROMPT_PREVIEW_CHARS: Final = 200


class _Params(msgspec.Struct, rename="camel", omit_defaults=True, tag_field="kind"):
    """Base of every task: tagged on ``kind``, params beside the tag."""


class ImageTask(_Params, tag="image"):
    prompt: str
    negative_prompt: str | None = None
    init_image_url: str | None = None
    mask_url: str | None = None
    ref_image_url: str | None = None
    denoise: float | None = None
    cfg_scale: float | None = None
    sampling_method: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 20
    seed: int | None = None
    ext: str = "webp"


class ChatMessage(msgspec.Struct):
    role: str
    content: str


class LlmTask(_Params, tag="llm"):
    messages: list[ChatMessage]
    system: str | None = None
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float | None = None
    stop: list[str] | None = None
    json_schema: Any = None
    reasoning: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    seed: int | None = None


class AudioSttTask(_Params, tag="audio_stt"):
    input_url: str
    language: str | None = None
    translate: bool | None = None
    prompt: str | None = None
    vad: bool | None = None
    timestamps: Literal["segment", "word"] | None = None


class AudioTtsTask(_Params, tag="audio_tts"):
    text: str
    voice: str = "default"
    speed: float | None = None
    language: str | None = None
    ext: str = "wav"


class VideoTask(_Params, tag="video"):
    prompt: str
    negative_prompt: str | None = None
    init_image_url: str | None = None
    seconds: float = 2.0
    fps: int | None = None
    width: int = 512
    height: int = 512
    ext: str = "mp4"


Task = ImageTask | LlmTask | AudioSttTask | AudioTtsTask | VideoTask


class ModelFile(msgspec.Struct, rename="camel", omit_defaults=True):
    role: str
    url: str
    filename: str
    approx_bytes: int | None = None
    sha256: str | None = None


class ModelCliDefaults(msgspec.Struct, rename="camel", omit_defaults=True):
    # The four numbers are required on the wire: an offer without one fails to parse.
    cfg_scale: float
    steps: int
    width: int
    height: int
    sampling_method: str | None = None
    flow_shift: float | None = None
    zero_cond_t: bool | None = None
    offload_to_cpu: bool | None = None
    context_size: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class ModelSource(msgspec.Struct, rename="camel"):
    engine: str
    files: list[ModelFile]
    cli_defaults: ModelCliDefaults


def task_kind(task: Task) -> TaskKindName:
    """The wire name of a task's kind (``image``, ``llm`` ...)."""
    kind: TaskKindName = task.__struct_config__.tag  # type: ignore[assignment]
    return kind


def prompt_for(task: Task) -> str:
    """The full prompt a job reports with its result (protocol.md §4.3), never a preview."""
    match task:
        case ImageTask() | VideoTask():
            return task.prompt
        case LlmTask():
            return task.messages[-1].content if task.messages else ""
        case AudioSttTask():
            return task.input_url
        case AudioTtsTask():
            return task.text


def prompt_preview(prompt: str) -> str:
    """A 200-character preview for logs and status screens only (never sent to the studio)."""
    if len(prompt) <= PROMPT_PREVIEW_CHARS:
        return prompt
    return prompt[:PROMPT_PREVIEW_CHARS] + "…"
