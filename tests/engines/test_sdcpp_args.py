"""sd-cli's value semantics (protocol.md §9.3) as the sd-cpp engine resolves them: pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.errors import EngineError
from engines.sdcpp_args import (
    DEFAULT_SEED,
    NO_MODEL_FILE,
    check_roles,
    filter_lora_tags,
    lora_directory,
    output_format,
    plan_generation,
    plan_load,
)
from protocol.tasks import ImageTask, ModelCliDefaults, ModelFile, ModelSource

DEFAULTS = ModelCliDefaults(cfg_scale=1.0, steps=8, width=768, height=512)


def task(**fields: object) -> ImageTask:
    return ImageTask(prompt="a fox", **fields)  # type: ignore[arg-type]


def source(*roles: str) -> ModelSource:
    files = [
        ModelFile(role, f"https://example.com/{i}.gguf", f"{i}.gguf")
        for i, role in enumerate(roles)
    ]
    return ModelSource("sd-cpp", files, DEFAULTS)


# --- sizes, steps, cfg, sampler, seed --------------------------------------------------------


def test_task_values_win_when_set() -> None:
    plan = plan_generation(
        task(width=640, height=384, steps=30, cfg_scale=7.5, sampling_method="dpm++2m", seed=42),
        DEFAULTS,
    )
    assert (plan.width, plan.height, plan.steps) == (640, 384, 30)
    assert (plan.cfg_scale, plan.sampler, plan.seed) == (7.5, "dpm++2m", 42)


def test_model_defaults_fill_what_the_task_leaves_out() -> None:
    defaults = ModelCliDefaults(
        cfg_scale=3.5, steps=4, width=1024, height=1024, sampling_method="euler"
    )
    plan = plan_generation(task(width=0, height=0), defaults)
    assert (plan.width, plan.height) == (1024, 1024)
    assert (plan.steps, plan.cfg_scale, plan.sampler) == (4, 3.5, "euler")


def test_task_default_size_512_beats_the_model_default() -> None:
    # The task's width defaults to 512 on the wire, so the model's size only wins on 0.
    plan = plan_generation(task(), DEFAULTS)
    assert (plan.width, plan.height) == (512, 512)


def test_steps_20_means_not_chosen() -> None:
    assert plan_generation(task(steps=20), DEFAULTS).steps == 8
    assert plan_generation(task(steps=19), DEFAULTS).steps == 19
    assert plan_generation(task(steps=21), DEFAULTS).steps == 21


@pytest.mark.parametrize("steps", [0, -3, 20])
def test_fallbacks_when_neither_side_chooses(steps: int) -> None:
    nothing = ModelCliDefaults(cfg_scale=0.0, steps=0, width=0, height=0)
    plan = plan_generation(task(width=0, height=-1, steps=steps, cfg_scale=0.0), nothing)
    assert (plan.width, plan.height, plan.steps, plan.cfg_scale) == (1024, 1024, 8, 1.0)
    assert plan.sampler is None


def test_negative_cfg_falls_back_to_the_model() -> None:
    assert plan_generation(task(cfg_scale=-1.0), DEFAULTS).cfg_scale == 1.0


def test_task_sampler_overrides_the_model_sampler() -> None:
    defaults = ModelCliDefaults(1.0, 8, 512, 512, sampling_method="euler")
    assert plan_generation(task(sampling_method="lcm"), defaults).sampler == "lcm"
    assert plan_generation(task(sampling_method=""), defaults).sampler == "euler"


def test_seed_defaults_to_sd_cli_default_and_fits_int64() -> None:
    assert plan_generation(task(), DEFAULTS).seed == DEFAULT_SEED == 42
    assert plan_generation(task(seed=0), DEFAULTS).seed == 0
    assert plan_generation(task(seed=2**64 - 1), DEFAULTS).seed == 2**63 - 1
    assert plan_generation(task(seed=2**63), DEFAULTS).seed == 0


def test_negative_prompt_empty_when_absent() -> None:
    assert plan_generation(task(), DEFAULTS).negative_prompt == ""
    assert plan_generation(task(negative_prompt="blurry"), DEFAULTS).negative_prompt == "blurry"


def test_flow_shift_comes_from_the_model_only() -> None:
    assert plan_generation(task(), DEFAULTS).flow_shift is None
    shifted = ModelCliDefaults(1.0, 8, 512, 512, flow_shift=3.0)
    assert plan_generation(task(), shifted).flow_shift == 3.0


# --- input images ------------------------------------------------------------------------


def test_text_to_image_has_no_inputs_and_no_strength() -> None:
    plan = plan_generation(task(), DEFAULTS)
    assert (plan.init_image_url, plan.mask_url, plan.ref_image_url, plan.strength) == (
        None,
        None,
        None,
        None,
    )


def test_init_image_gets_default_strength() -> None:
    plan = plan_generation(task(init_image_url="https://x/init.png"), DEFAULTS)
    assert plan.init_image_url == "https://x/init.png"
    assert plan.strength == 0.75


def test_denoise_is_the_strength() -> None:
    plan = plan_generation(task(init_image_url="https://x/i.png", denoise=0.55), DEFAULTS)
    assert plan.strength == 0.55


@pytest.mark.parametrize(("denoise", "strength"), [(1.7, 1.0), (-0.2, 0.0), (0.0, 0.0)])
def test_denoise_is_clamped(denoise: float, strength: float) -> None:
    plan = plan_generation(task(init_image_url="https://x/i.png", denoise=denoise), DEFAULTS)
    assert plan.strength == strength


def test_mask_is_used_with_an_init_image() -> None:
    plan = plan_generation(
        task(init_image_url="https://x/i.png", mask_url="https://x/m.png", denoise=0.8), DEFAULTS
    )
    assert (plan.mask_url, plan.strength) == ("https://x/m.png", 0.8)


def test_mask_alone_is_ignored() -> None:
    plan = plan_generation(task(mask_url="https://x/m.png"), DEFAULTS)
    assert plan.mask_url is None


def test_reference_takes_precedence_over_init() -> None:
    plan = plan_generation(
        task(
            ref_image_url="https://x/r.png",
            init_image_url="https://x/i.png",
            mask_url="https://x/m.png",
            denoise=0.3,
        ),
        DEFAULTS,
    )
    assert plan.ref_image_url == "https://x/r.png"
    assert plan.mask_url == "https://x/m.png"
    assert (plan.init_image_url, plan.strength) == (None, None)


def test_empty_urls_count_as_absent() -> None:
    plan = plan_generation(task(ref_image_url="", init_image_url="", mask_url="m"), DEFAULTS)
    assert (plan.ref_image_url, plan.init_image_url, plan.mask_url) == (None, None, None)


# --- roles and load-time options -------------------------------------------------------------


def test_roles_map_onto_library_arguments(tmp_path: Path) -> None:
    files = {
        "diffusion-model": [tmp_path / "unet.gguf"],
        "vae": [tmp_path / "ae.safetensors"],
        "text-encoder": [tmp_path / "qwen.gguf"],
        "text-encoder-vision": [tmp_path / "mmproj.gguf"],
    }
    plan = plan_load(files, DEFAULTS)
    assert plan.diffusion_model_path == tmp_path / "unet.gguf"
    assert plan.model_path is None
    assert plan.vae_path == tmp_path / "ae.safetensors"
    assert plan.llm_path == tmp_path / "qwen.gguf"
    assert plan.llm_vision_path == tmp_path / "mmproj.gguf"
    assert plan.lora_dir is None
    assert (plan.offload_to_cpu, plan.zero_cond_t) == (False, False)
    assert plan.files() == (
        tmp_path / "unet.gguf",
        tmp_path / "ae.safetensors",
        tmp_path / "qwen.gguf",
        tmp_path / "mmproj.gguf",
    )


def test_model_file_is_a_full_checkpoint_only_without_a_diffusion_model(tmp_path: Path) -> None:
    alone = plan_load({"model": [tmp_path / "sd.gguf"]}, DEFAULTS)
    assert (alone.model_path, alone.diffusion_model_path) == (tmp_path / "sd.gguf", None)
    both = plan_load(
        {"model": [tmp_path / "sd.gguf"], "diffusion-model": [tmp_path / "unet.gguf"]}, DEFAULTS
    )
    assert (both.model_path, both.diffusion_model_path) == (None, tmp_path / "unet.gguf")


def test_first_file_of_a_role_wins(tmp_path: Path) -> None:
    plan = plan_load({"model": [tmp_path / "a.gguf", tmp_path / "b.gguf"]}, DEFAULTS)
    assert plan.model_path == tmp_path / "a.gguf"


def test_no_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=f"^{NO_MODEL_FILE}$") as err:
        plan_load({"vae": [tmp_path / "ae.safetensors"]}, DEFAULTS)
    assert err.value.retryable
    assert NO_MODEL_FILE == "modelSource has no diffusion-model / model file"


def test_roles_are_checked_before_any_download() -> None:
    check_roles(source("model"))
    check_roles(source("diffusion-model", "vae"))
    with pytest.raises(EngineError, match=NO_MODEL_FILE):
        check_roles(source("vae", "text-encoder", "lora"))
    with pytest.raises(EngineError, match=NO_MODEL_FILE):
        check_roles(source())


def test_load_time_options_map(tmp_path: Path) -> None:
    defaults = ModelCliDefaults(1.0, 8, 512, 512, zero_cond_t=True, offload_to_cpu=True)
    plan = plan_load({"diffusion-model": [tmp_path / "q.gguf"]}, defaults)
    assert (plan.offload_to_cpu, plan.zero_cond_t) == (True, True)
    off = ModelCliDefaults(1.0, 8, 512, 512, zero_cond_t=False, offload_to_cpu=False)
    assert plan_load({"diffusion-model": [tmp_path / "q.gguf"]}, off) != plan


def test_lora_dir_is_the_directory_of_the_lora_files(tmp_path: Path) -> None:
    loras = [tmp_path / "m" / "style.safetensors", tmp_path / "m" / "detail.gguf"]
    plan = plan_load({"model": [tmp_path / "m" / "sd.gguf"], "lora": loras}, DEFAULTS)
    assert plan.lora_dir == tmp_path / "m"
    assert plan.lora_names == {"style.safetensors", "style", "detail.gguf", "detail"}


def test_lora_files_in_two_directories_are_refused(tmp_path: Path) -> None:
    assert lora_directory([]) is None
    with pytest.raises(EngineError, match="must share a directory"):
        lora_directory([tmp_path / "a" / "x.gguf", tmp_path / "b" / "y.gguf"])


def test_equal_inputs_give_equal_load_plans(tmp_path: Path) -> None:
    files = {"model": [tmp_path / "sd.gguf"], "lora": [tmp_path / "l.gguf"]}
    assert plan_load(files, DEFAULTS) == plan_load(dict(files), DEFAULTS)
    assert hash(plan_load(files, DEFAULTS)) == hash(plan_load(dict(files), DEFAULTS))


# --- lora tags and output format -------------------------------------------------------------


def test_lora_tags_naming_the_model_loras_are_kept() -> None:
    allowed = frozenset({"style", "style.safetensors"})
    prompt, dropped = filter_lora_tags("a fox <lora:style:0.8> <lora:|high_noise|style:1>", allowed)
    assert prompt == "a fox <lora:style:0.8> <lora:|high_noise|style:1>"
    assert dropped == []


@pytest.mark.parametrize("name", ["/etc/passwd", "../other/style", "sub/style", "x\\style", ".."])
def test_lora_tags_naming_a_path_are_dropped(name: str) -> None:
    # Even a path that happens to be "allowed" is no plain file name of the LoRA dir.
    prompt, dropped = filter_lora_tags(f"a fox <lora:{name}:1>, dusk", frozenset({"style", name}))
    assert prompt == "a fox , dusk"
    assert dropped == [name]


def test_lora_tags_naming_other_files_are_dropped() -> None:
    # e.g. the checkpoint itself, which sits in the same directory as the LoRAs
    prompt, dropped = filter_lora_tags("<lora:sd:1>a fox<lora:style:1>", frozenset({"style"}))
    assert (prompt, dropped) == ("a fox<lora:style:1>", ["sd"])


def test_output_format_follows_ext() -> None:
    assert output_format("png") == ("PNG", "png")
    assert output_format("PNG") == ("PNG", "png")
    assert output_format("webp") == ("WEBP", "webp")
    assert output_format("jpg") == ("WEBP", "webp")  # the Rust sd-cpp engine always sent webp
