"""Task payloads and model sources (protocol.md §3-§4, §11 ``multi_modal.rs`` and the
``prompt_for`` / preview cases of ``runtime_helpers.rs``)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from protocol.tasks import (
    PROMPT_PREVIEW_CHARS,
    TASK_KINDS,
    AudioSttTask,
    AudioTtsTask,
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelFile,
    ModelSource,
    Task,
    VideoTask,
    prompt_for,
    prompt_preview,
    task_kind,
)


def decode_task(obj: dict[str, Any]) -> Task:
    task: Task = msgspec.json.decode(json.dumps(obj), type=Task)
    return task


def encode_obj(value: object) -> Any:
    return json.loads(msgspec.json.encode(value))


# --- §3.2 ModelSource -----------------------------------------------------------------------

RECOVERY_EXAMPLE = """{"engine":"sd-cpp","files":[
 {"role":"diffusion-model","url":"https://huggingface.co/leejet/Z-Image-Turbo-GGUF/resolve/main/z_image_turbo-Q4_K.gguf","filename":"z_image_turbo-Q4_K.gguf"},
 {"role":"text-encoder","url":"https://huggingface.co/unsloth/Qwen3-4B-Instruct-2507-GGUF/resolve/main/Qwen3-4B-Instruct-2507-Q4_K_M.gguf","filename":"Qwen3-4B-Instruct-2507-Q4_K_M.gguf"},
 {"role":"vae","url":"https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors","filename":"ae.safetensors"}],
 "cliDefaults":{"cfgScale":1.0,"steps":8,"width":1024,"height":1024,"samplingMethod":"euler"}}"""

CLI_DEFAULTS = {"cfgScale": 1.0, "steps": 8, "width": 1024, "height": 1024}


def test_model_source_example_round_trips() -> None:
    source = msgspec.json.decode(RECOVERY_EXAMPLE, type=ModelSource)
    assert source.engine == "sd-cpp"
    assert [f.role for f in source.files] == ["diffusion-model", "text-encoder", "vae"]
    assert source.files[2].filename == "ae.safetensors"
    assert source.files[0].approx_bytes is None
    assert source.cli_defaults.sampling_method == "euler"
    assert encode_obj(source) == json.loads(RECOVERY_EXAMPLE)


@pytest.mark.parametrize("missing", ["cfgScale", "steps", "width", "height"])
def test_cli_defaults_numeric_fields_are_required(missing: str) -> None:
    obj = dict(CLI_DEFAULTS)
    del obj[missing]
    with pytest.raises(msgspec.ValidationError, match=f"`{missing}`"):
        msgspec.json.decode(json.dumps(obj), type=ModelCliDefaults)


@pytest.mark.parametrize("missing", ["engine", "files", "cliDefaults"])
def test_model_source_fields_are_required(missing: str) -> None:
    obj: dict[str, Any] = {"engine": "synthetic", "files": [], "cliDefaults": CLI_DEFAULTS}
    del obj[missing]
    with pytest.raises(msgspec.ValidationError, match=f"`{missing}`"):
        msgspec.json.decode(json.dumps(obj), type=ModelSource)


def test_cli_defaults_optional_fields_omitted_when_absent_and_round_trip_when_set() -> None:
    bare = ModelCliDefaults(cfg_scale=1.0, steps=8, width=1024, height=1024)
    assert encode_obj(bare) == CLI_DEFAULTS
    full = {
        **CLI_DEFAULTS,
        "samplingMethod": "euler",
        "flowShift": 3.0,
        "zeroCondT": True,
        "offloadToCpu": False,
        "contextSize": 8192,
        "chatTemplateKwargs": {"enable_thinking": False},
    }
    parsed = msgspec.json.decode(json.dumps(full), type=ModelCliDefaults)
    assert parsed.zero_cond_t is True
    assert parsed.offload_to_cpu is False
    assert parsed.chat_template_kwargs == {"enable_thinking": False}
    assert encode_obj(parsed) == full


def test_cli_defaults_explicit_nulls_parse_as_absent() -> None:
    obj = {**CLI_DEFAULTS, "samplingMethod": None, "flowShift": None, "contextSize": None}
    parsed = msgspec.json.decode(json.dumps(obj), type=ModelCliDefaults)
    assert parsed == ModelCliDefaults(cfg_scale=1.0, steps=8, width=1024, height=1024)


def test_model_file_optional_fields() -> None:
    bare = ModelFile(role="vae", url="https://x/ae.safetensors", filename="ae.safetensors")
    assert encode_obj(bare) == {
        "role": "vae",
        "url": "https://x/ae.safetensors",
        "filename": "ae.safetensors",
    }
    full = {
        "role": "model",
        "url": "https://x/m.gguf",
        "filename": "m.gguf",
        "approxBytes": 123_456_789_012,
        "sha256": "AB" * 32,
    }
    parsed = msgspec.json.decode(json.dumps(full), type=ModelFile)
    assert parsed.approx_bytes == 123_456_789_012
    assert encode_obj(parsed) == full
    nulls = {**full, "approxBytes": None, "sha256": None}
    assert msgspec.json.decode(json.dumps(nulls), type=ModelFile) == ModelFile(
        role="model", url="https://x/m.gguf", filename="m.gguf"
    )


def test_unknown_engine_and_role_stay_plain_strings() -> None:
    obj = {
        "engine": "candle",
        "files": [{"role": "refiner", "url": "https://x/r", "filename": "r"}],
        "cliDefaults": CLI_DEFAULTS,
    }
    parsed = msgspec.json.decode(json.dumps(obj), type=ModelSource)
    assert parsed.engine == "candle"
    assert parsed.files[0].role == "refiner"


# --- §4.1 / §4.2 tasks ------------------------------------------------------------------------


def test_task_kinds_canonical_order() -> None:
    assert TASK_KINDS == ("image", "llm", "audio_stt", "audio_tts", "video")


def test_image_defaults() -> None:
    task = decode_task({"kind": "image", "prompt": "a fox"})
    assert task == ImageTask(prompt="a fox")
    assert isinstance(task, ImageTask)
    assert (task.width, task.height, task.steps, task.ext, task.seed) == (
        512,
        512,
        20,
        "webp",
        None,
    )
    for field in ("negative_prompt", "init_image_url", "mask_url", "ref_image_url", "denoise"):
        assert getattr(task, field) is None
    assert (task.cfg_scale, task.sampling_method) == (None, None)


def test_llm_defaults() -> None:
    task = decode_task({"kind": "llm", "messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(task, LlmTask)
    assert (task.max_tokens, task.temperature) == (512, 0.7)
    assert (task.system, task.top_p, task.stop, task.json_schema, task.reasoning) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert task.chat_template_kwargs is None


def test_tts_defaults() -> None:
    task = decode_task({"kind": "audio_tts", "text": "hallo"})
    assert task == AudioTtsTask(text="hallo")
    assert isinstance(task, AudioTtsTask)
    assert (task.voice, task.ext, task.speed, task.language) == ("default", "wav", None, None)


def test_video_defaults() -> None:
    task = decode_task({"kind": "video", "prompt": "waves"})
    assert isinstance(task, VideoTask)
    assert (task.seconds, task.width, task.height, task.ext, task.fps) == (
        2.0,
        512,
        512,
        "mp4",
        None,
    )


def test_stt_only_input_url_required() -> None:
    task = decode_task({"kind": "audio_stt", "inputUrl": "https://x/a.wav", "language": None})
    assert task == AudioSttTask(input_url="https://x/a.wav")


def test_image_params_with_every_field_parse_and_round_trip() -> None:
    obj = {
        "kind": "image",
        "prompt": "p",
        "negativePrompt": "blurry",
        "initImageUrl": "https://x/init.png",
        "maskUrl": "https://x/mask.png",
        "refImageUrl": "https://x/ref.png",
        "denoise": 0.55,
        "cfgScale": 7.5,
        "samplingMethod": "dpm++2m",
        "width": 768,
        "height": 512,
        "steps": 30,
        "seed": 2**64 - 1,
        "ext": "png",
    }
    task = decode_task(obj)
    assert isinstance(task, ImageTask)
    assert task.seed == 2**64 - 1
    assert task.ref_image_url == "https://x/ref.png"
    assert encode_obj(task) == obj


def test_llm_params_camel_case_and_round_trip() -> None:
    obj = {
        "kind": "llm",
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        "system": "be brief",
        "maxTokens": 4,
        "temperature": 0.0,
        "topP": 0.9,
        "stop": ["\n\n"],
        "jsonSchema": {"type": "object"},
        "reasoning": "low",
        "chatTemplateKwargs": {"enable_thinking": False},
        "seed": 7,
    }
    task = decode_task(obj)
    assert isinstance(task, LlmTask)
    assert task.max_tokens == 4
    assert task.messages[1] == ChatMessage(role="assistant", content="b")
    assert encode_obj(task) == obj


def test_legacy_snake_case_llm_params_are_ignored_not_used() -> None:
    task = decode_task({"kind": "llm", "messages": [], "max_tokens": 4})
    assert isinstance(task, LlmTask)
    assert task.max_tokens == 512


@pytest.mark.parametrize(
    "obj",
    [
        {
            "kind": "audio_stt",
            "inputUrl": "u",
            "language": "nl",
            "translate": True,
            "prompt": "p",
            "vad": False,
            "timestamps": "word",
        },
        {
            "kind": "audio_tts",
            "text": "t",
            "voice": "v",
            "speed": 1.25,
            "language": "en",
            "ext": "mp3",
        },
        {
            "kind": "video",
            "prompt": "p",
            "negativePrompt": "n",
            "initImageUrl": "u",
            "seconds": 4.5,
            "fps": 12,
            "width": 256,
            "height": 128,
            "ext": "gif",
        },
    ],
    ids=lambda o: o["kind"],
)
def test_other_kinds_round_trip_with_every_field(obj: dict[str, Any]) -> None:
    assert encode_obj(decode_task(obj)) == obj


def test_task_omits_absent_optionals_when_encoded() -> None:
    assert encode_obj(ImageTask(prompt="p", width=1024)) == {
        "kind": "image",
        "prompt": "p",
        "width": 1024,
    }


def test_bad_timestamps_value_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_task({"kind": "audio_stt", "inputUrl": "u", "timestamps": "char"})


@pytest.mark.parametrize(
    ("obj", "missing"),
    [
        ({"kind": "image"}, "prompt"),
        ({"kind": "llm"}, "messages"),
        ({"kind": "audio_stt"}, "inputUrl"),
        ({"kind": "audio_tts"}, "text"),
        ({"kind": "video"}, "prompt"),
    ],
)
def test_required_task_params(obj: dict[str, Any], missing: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"`{missing}`"):
        decode_task(obj)


def test_unknown_kind_is_named() -> None:
    with pytest.raises(msgspec.ValidationError, match="hologram"):
        decode_task({"kind": "hologram"})


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        (ImageTask(prompt="p"), "image"),
        (LlmTask(messages=[]), "llm"),
        (AudioSttTask(input_url="u"), "audio_stt"),
        (AudioTtsTask(text="t"), "audio_tts"),
        (VideoTask(prompt="p"), "video"),
    ],
)
def test_task_kind_is_the_wire_string(task: Task, kind: str) -> None:
    assert task_kind(task) == kind
    assert encode_obj(task)["kind"] == kind
    assert decode_task(encode_obj(task)) == task


# --- §4.3 prompt_for and the preview ----------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "prompt"),
    [
        (ImageTask(prompt="an aurora fox"), "an aurora fox"),
        (
            LlmTask(
                messages=[
                    ChatMessage(role="system", content="first"),
                    ChatMessage(role="user", content="the last one"),
                ],
                system="not this",
            ),
            "the last one",
        ),
        (LlmTask(messages=[]), ""),
        (AudioSttTask(input_url="https://x/a.wav", prompt="not this"), "https://x/a.wav"),
        (AudioTtsTask(text="say this"), "say this"),
        (VideoTask(prompt="waves"), "waves"),
    ],
    ids=["image", "llm-last-message", "llm-empty", "stt-url", "tts-text", "video"],
)
def test_prompt_for_each_kind(task: Task, prompt: str) -> None:
    assert prompt_for(task) == prompt


def test_prompt_for_is_never_the_preview() -> None:
    long = "x" * 1000
    assert prompt_for(ImageTask(prompt=long)) == long


def test_preview_short_prompts_unchanged() -> None:
    assert PROMPT_PREVIEW_CHARS == 200
    assert prompt_preview("") == ""
    assert prompt_preview("a" * 200) == "a" * 200


def test_preview_201_chars_clipped_with_ellipsis() -> None:
    preview = prompt_preview("a" * 201)
    assert preview == "a" * 200 + "…"
    assert len(preview) == 201


def test_preview_is_multibyte_safe() -> None:
    text = "🦊é" * 150  # 300 characters, far more bytes
    preview = prompt_preview(text)
    assert preview == text[:200] + "…"
    assert preview.encode("utf-8").decode("utf-8") == preview
    assert prompt_preview("ü" * 200) == "ü" * 200
