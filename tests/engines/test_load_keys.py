"""Load keys from claims alone: equal claims share a key, every part of a load changes it,
per-job values never do (pure, no engine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engines.load_keys import load_key
from protocol.tasks import (
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelFile,
    ModelSource,
    Task,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA_A = "a" * 64
SHA_B = "b" * 64


def _file(role: str, name: str, sha: str | None = SHA_A, url: str | None = None) -> ModelFile:
    return ModelFile(role, url or f"https://models.example/{name}", name, 1000, sha)


def _defaults(**fields: Any) -> ModelCliDefaults:
    return ModelCliDefaults(
        **({"cfg_scale": 1.0, "steps": 8, "width": 512, "height": 512} | fields)
    )


def _source(engine: str, *files: ModelFile, **defaults: Any) -> ModelSource:
    return ModelSource(engine, list(files), _defaults(**defaults))


def _chat(text: str = "hi", **fields: Any) -> LlmTask:
    return LlmTask(messages=[ChatMessage("user", text)], **fields)


def _image(prompt: str = "a fox", **fields: Any) -> ImageTask:
    return ImageTask(prompt=prompt, **fields)


def _copy(source: ModelSource) -> ModelSource:
    """An equal source built afresh, as a second offer would decode it."""
    return msgspec.json.decode(msgspec.json.encode(source), type=ModelSource)


# --- llama --------------------------------------------------------------------------------


LLAMA = _source("llama-cpp", _file("model", "qwen3-4b-q4.gguf"), context_size=4096)


def test_equal_llama_claims_share_a_key_whatever_the_job() -> None:
    key = load_key("llama", "qwen", LLAMA, _chat())
    assert key.startswith("llama:qwen3-4b-q4.gguf:ctx=4096:")
    assert load_key("llama", "qwen", _copy(LLAMA), _chat()) == key
    # The studio's spelling of the engine names the same key.
    assert load_key("llama-cpp", "qwen", LLAMA, _chat()) == key
    # Prompt, seed, temperature and token budget are per job: same load.
    assert load_key("llama", "qwen", LLAMA, _chat("other", seed=9, max_tokens=3)) == key
    assert load_key("llama", "qwen", LLAMA, _chat(temperature=0.0)) == key
    # The model id does not reach a llama load (the file sits at llm/<filename>).
    assert load_key("llama", "another-id", LLAMA, _chat()) == key
    # Non-GGUF files next to it are not loaded.
    extra = _source("llama-cpp", *LLAMA.files, _file("other", "README.md"), context_size=4096)
    assert load_key("llama", "qwen", extra, _chat()) == key


@pytest.mark.parametrize(
    "changed",
    [
        _source("llama-cpp", _file("model", "qwen3-4b-q4.gguf", SHA_B), context_size=4096),
        _source("llama-cpp", _file("model", "qwen3-4b-q8.gguf"), context_size=4096),
        _source("llama-cpp", _file("model", "qwen3-4b-q4.gguf"), context_size=8192),
        _source("llama-cpp", _file("model", "qwen3-4b-q4.gguf")),
    ],
    ids=["sha256", "file name", "context size", "context auto"],
)
def test_each_part_of_a_llama_load_changes_the_key(changed: ModelSource) -> None:
    assert load_key("llama", "qwen", changed, _chat()) != load_key("llama", "qwen", LLAMA, _chat())


def test_llama_without_sha_is_keyed_by_url_and_auto_context() -> None:
    by_url = _source("llama-cpp", _file("model", "m.gguf", None, "https://a.example/m.gguf"))
    other_url = _source("llama-cpp", _file("model", "m.gguf", None, "https://b.example/m.gguf"))
    key = load_key("llama", "m", by_url, _chat())
    assert ":ctx=auto:" in key
    assert load_key("llama", "m", other_url, _chat()) != key
    # A non-positive context size means "unset", as the engine reads it.
    zero = _source("llama-cpp", *by_url.files, context_size=0)
    assert load_key("llama", "m", zero, _chat()) == key


def test_llama_picks_the_model_role_gguf_like_the_engine() -> None:
    draft, main = _file("draft", "draft.gguf", SHA_B), _file("model", "main.gguf")
    key = load_key("llama", "m", _source("llama-cpp", draft, main), _chat())
    assert key.startswith("llama:main.gguf:")
    changed_draft = _source("llama-cpp", _file("draft", "draft.gguf", SHA_A), main)
    assert load_key("llama", "m", changed_draft, _chat()) == key


def test_a_local_llama_model_is_keyed_by_its_name() -> None:
    local = _source("llama-cpp")
    assert load_key("llama", "tiny", local, _chat()) == load_key("llama", "tiny", local, _chat())
    assert load_key("llama", "tiny", local, _chat()) != load_key("llama", "other", local, _chat())
    assert load_key("llama", "tiny", local, _chat()).startswith("llama:tiny:ctx=auto:")


# --- sd-cpp -------------------------------------------------------------------------------


SDCPP = _source(
    "sd-cpp",
    _file("diffusion-model", "flux.gguf"),
    _file("vae", "ae.safetensors", SHA_B),
    _file("text-encoder", "qwen.gguf"),
    _file("lora", "style.safetensors"),
    _file("lora", "detail.safetensors", SHA_B),
    steps=4,
)


def test_equal_sdcpp_claims_share_a_key_whatever_the_job() -> None:
    key = load_key("sdcpp", "flux", SDCPP, _image())
    assert key.startswith("sdcpp:flux:")
    assert load_key("sd-cpp", "flux", _copy(SDCPP), _image()) == key
    # Prompt, seed, steps, size, sampler and images are per job.
    job = _image("a cat", seed=3, steps=30, width=768, sampling_method="euler")
    assert load_key("sdcpp", "flux", SDCPP, job) == key
    # So are the generation defaults of the model.
    defaults = _defaults(steps=20, cfg_scale=3.5, width=1024, flow_shift=3.0, sampling_method="x")
    assert load_key("sdcpp", "flux", ModelSource("sd-cpp", SDCPP.files, defaults), job) == key
    # LoRA order does not change the directory that is loaded.
    reordered = [SDCPP.files[0], SDCPP.files[1], SDCPP.files[2], SDCPP.files[4], SDCPP.files[3]]
    assert (
        load_key("sdcpp", "flux", ModelSource("sd-cpp", reordered, SDCPP.cli_defaults), job) == key
    )


def _sdcpp_with(index: int, replacement: ModelFile | None) -> ModelSource:
    files = list(SDCPP.files)
    if replacement is None:
        del files[index]
    else:
        files[index] = replacement
    return ModelSource("sd-cpp", files, SDCPP.cli_defaults)


@pytest.mark.parametrize(
    "changed",
    [
        _sdcpp_with(0, _file("diffusion-model", "flux.gguf", SHA_B)),
        _sdcpp_with(1, _file("vae", "ae.safetensors", SHA_A)),
        _sdcpp_with(2, _file("text-encoder", "qwen.gguf", None)),
        _sdcpp_with(2, None),
        _sdcpp_with(3, _file("lora", "style.safetensors", SHA_B)),
        _sdcpp_with(4, None),
        _source("sd-cpp", *SDCPP.files, _file("text-encoder-vision", "mmproj.gguf"), steps=4),
        _source("sd-cpp", *SDCPP.files, steps=4, offload_to_cpu=True),
        _source("sd-cpp", *SDCPP.files, steps=4, zero_cond_t=True),
    ],
    ids=[
        "diffusion sha",
        "vae sha",
        "text encoder by url",
        "no text encoder",
        "lora sha",
        "one lora fewer",
        "vision encoder",
        "offload_to_cpu",
        "zero_cond_t",
    ],
)
def test_each_part_of_an_sdcpp_load_changes_the_key(changed: ModelSource) -> None:
    assert load_key("sdcpp", "flux", changed, _image()) != load_key(
        "sdcpp", "flux", SDCPP, _image()
    )


def test_sdcpp_keys_follow_what_the_load_plan_reads() -> None:
    # The model id names the directory the files are stored in: another copy, another load.
    assert load_key("sdcpp", "flux-b", SDCPP, _image()) != load_key(
        "sdcpp", "flux", SDCPP, _image()
    )
    # A checkpoint is ignored next to a diffusion model, as plan_load ignores it.
    with_checkpoint = _source("sd-cpp", *SDCPP.files, _file("model", "full.ckpt"), steps=4)
    assert load_key("sdcpp", "flux", with_checkpoint, _image()) == load_key(
        "sdcpp", "flux", SDCPP, _image()
    )
    # Only the first file of a role is loaded.
    second_vae = _source("sd-cpp", *SDCPP.files, _file("vae", "other.safetensors"), steps=4)
    assert load_key("sdcpp", "flux", second_vae, _image()) == load_key(
        "sdcpp", "flux", SDCPP, _image()
    )
    # Without a diffusion model, the checkpoint is the model.
    a = _source("sd-cpp", _file("model", "sd15.safetensors"))
    b = _source("sd-cpp", _file("model", "sd15.safetensors", SHA_B))
    assert load_key("sdcpp", "sd15", a, _image()) != load_key("sdcpp", "sd15", b, _image())


# --- synthetic and others -----------------------------------------------------------------


def test_synthetic_keys_are_the_model_id() -> None:
    source = _source("synthetic")
    task: Task = _image()
    assert load_key("synthetic", "synthetic-image", source, task) == "synthetic:synthetic-image"
    assert load_key("synthetic", "synthetic-image", source, _chat()) == "synthetic:synthetic-image"
    assert load_key("synthetic", "other", source, task) == "synthetic:other"


def test_keys_stay_short_for_long_names() -> None:
    name = "x" * 300 + ".gguf"
    key = load_key("llama", "m", _source("llama-cpp", _file("model", name)), _chat())
    assert len(key) < 100
    longer = load_key("llama", "m", _source("llama-cpp", _file("model", name + "x")), _chat())
    assert longer != key  # the hash covers the whole name


def test_an_unknown_engine_still_gets_a_stable_key() -> None:
    source = _source("onnx", _file("model", "whisper.onnx"))
    key = load_key("onnx", "whisper", source, _chat())
    assert key.startswith("onnx:whisper:")
    assert load_key("onnx", "whisper", _copy(source), _chat()) == key


def test_the_module_imports_no_inference_library() -> None:
    code = (
        "import sys, engines.load_keys\n"
        "bad = {'llama_cpp', 'stable_diffusion_cpp', 'zmq', 'numpy'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
