"""``--engines`` parsing into slot specs, and the per-GPU environment of a host."""

from __future__ import annotations

import pytest

from supervisor.pool.slot_spec import SlotSpec, SlotSpecError, gpu_env, parse_engines


def test_engines_on_gpus_with_synthetic_added() -> None:
    specs = parse_engines("sdcpp@0,sdcpp@1,llama@1")
    assert specs == [
        SlotSpec("sdcpp", 0, 0),
        SlotSpec("sdcpp", 1, 1),
        SlotSpec("llama", 1, 0),
        SlotSpec("synthetic", None, 0),
    ]
    assert [s.slot_id for s in specs] == [
        "sdcpp-gpu0-0",
        "sdcpp-gpu1-1",
        "llama-gpu1-0",
        "synthetic-default-0",
    ]


def test_slot_ids_are_unique_even_on_one_gpu() -> None:
    specs = parse_engines("llama@0,llama@0,llama")
    ids = [s.slot_id for s in specs]
    assert ids == ["llama-gpu0-0", "llama-gpu0-1", "llama-default-2", "synthetic-default-0"]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("spelling", ["-synthetic", "!synthetic", "no-synthetic"])
def test_synthetic_can_be_excluded(spelling: str) -> None:
    assert parse_engines(f"sdcpp@0,{spelling}") == [SlotSpec("sdcpp", 0, 0)]
    assert parse_engines(f"{spelling},sdcpp@0") == [SlotSpec("sdcpp", 0, 0)]


def test_synthetic_not_added_twice_when_listed() -> None:
    assert parse_engines("synthetic,sdcpp") == [
        SlotSpec("synthetic", None, 0),
        SlotSpec("sdcpp", None, 0),
    ]
    assert parse_engines("synthetic@1") == [SlotSpec("synthetic", 1, 0)]


def test_with_synthetic_false() -> None:
    assert parse_engines("llama", with_synthetic=False) == [SlotSpec("llama", None, 0)]


def test_empty_value_means_synthetic_only() -> None:
    assert parse_engines("") == [SlotSpec("synthetic", None, 0)]


def test_list_input_whitespace_and_empty_items() -> None:
    assert parse_engines([" sdcpp@2 ", "", "llama"]) == [
        SlotSpec("sdcpp", 2, 0),
        SlotSpec("llama", None, 0),
        SlotSpec("synthetic", None, 0),
    ]
    assert parse_engines(" sdcpp@0 ,, llama ") == parse_engines("sdcpp@0,llama")


def test_unknown_engine_is_named_with_the_choices() -> None:
    with pytest.raises(SlotSpecError, match=r"unknown engine `onnx`.*llama, sdcpp, synthetic"):
        parse_engines("sdcpp,onnx@0")


@pytest.mark.parametrize("value", ["sdcpp@x", "sdcpp@-1", "sdcpp@1.5", "sdcpp@0@1", "sdcpp@²"])
def test_bad_gpu_index(value: str) -> None:
    with pytest.raises(SlotSpecError, match="bad GPU index"):
        parse_engines(value)


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [("-synthetic", {}), ("", {"with_synthetic": False}), (",,", {"with_synthetic": False})],
)
def test_no_engines_is_an_error(value: str, kwargs: dict[str, bool]) -> None:
    with pytest.raises(SlotSpecError, match="no engines selected"):
        parse_engines(value, **kwargs)


def test_slot_spec_error_is_a_value_error() -> None:
    assert issubclass(SlotSpecError, ValueError)


def test_gpu_env_pins_every_backend() -> None:
    assert gpu_env(None) == {}
    assert gpu_env(1) == {
        "CUDA_VISIBLE_DEVICES": "1",
        "HIP_VISIBLE_DEVICES": "1",
        "ROCR_VISIBLE_DEVICES": "1",
        "GGML_VK_VISIBLE_DEVICES": "1",
    }
    assert set(gpu_env(0).values()) == {"0"}
