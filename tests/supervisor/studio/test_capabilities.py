"""The capability snapshot and its one-line summary (protocol.md §5, §2.6 step 3), and the
VRAM it advertises: every card's memory, summed over the cards the GPU source reads (§9.6)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from protocol.studio import Capabilities, encode_json
from supervisor import __version__
from supervisor.config import WorkerConfig
from supervisor.errors import GpuReadError
from supervisor.gpu.facts import GpuDevice
from supervisor.gpu.governor import GpuGovernor
from supervisor.gpu.slot_contract import GpuSettings
from supervisor.pool.gpu_setup import prepared_gpus
from supervisor.studio import capabilities as caps_module
from supervisor.studio.capabilities import ENGINE_NAME, build_capabilities, summary_line

SYNTHETIC_PER_KIND = {
    "image": ["synthetic", "synthetic-image"],
    "llm": ["synthetic", "synthetic-llm"],
    "audio_stt": ["synthetic", "synthetic-stt"],
    "audio_tts": ["synthetic", "synthetic-tts"],
    "video": ["synthetic", "synthetic-video"],
}


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps_module, "machine_name", lambda: "rig-01")
    monkeypatch.setattr(caps_module, "user_name", lambda: "webber")


def build(
    per_kind: dict[str, list[str]],
    *,
    paused: bool = False,
    cfg: WorkerConfig | None = None,
    jobs: int = 1,
) -> Capabilities:
    cfg = cfg or WorkerConfig()
    return build_capabilities(
        cfg,
        per_kind,
        paused=paused,
        max_concurrent_jobs=jobs,
        vram_gb=(24.0, cfg.vram_threshold_gb),
    )


# --- build_capabilities ---------------------------------------------------------------------


def test_synthetic_advertises_all_five_kinds() -> None:
    caps = build(SYNTHETIC_PER_KIND)
    assert caps.task_kinds == ["image", "llm", "audio_stt", "audio_tts", "video"]
    assert caps.supported_models_per_kind == SYNTHETIC_PER_KIND
    assert "synthetic" in caps.supported_models
    assert "*" not in caps.supported_models


def test_host_config_and_version_fields() -> None:
    cfg = WorkerConfig(
        vram_threshold_gb=6.0,
        auto_start=False,
        auto_update_enabled=False,
        start_minimised=False,
        only_when_idle=True,
    )
    caps = build(SYNTHETIC_PER_KIND, cfg=cfg, jobs=3)
    assert (caps.machine_name, caps.username, caps.agent_version) == (
        "rig-01",
        "webber",
        __version__,
    )
    assert caps.engine == ENGINE_NAME == "multi"
    assert (caps.vram_total_gb, caps.vram_threshold_gb) == (24.0, 6.0)
    assert (caps.auto_start, caps.auto_update, caps.start_minimised, caps.only_when_idle) == (
        False,
        False,
        False,
        True,
    )
    assert caps.max_concurrent_jobs == 3


def test_auto_enabled_follows_pause() -> None:
    assert build(SYNTHETIC_PER_KIND).auto_enabled is True
    assert build(SYNTHETIC_PER_KIND, paused=True).auto_enabled is False


def test_kinds_in_canonical_order_whatever_the_input_order() -> None:
    per_kind = {"video": ["v"], "audio_tts": ["t"], "image": ["i"], "llm": ["l"]}
    caps = build(per_kind)
    assert caps.task_kinds == ["image", "llm", "audio_tts", "video"]
    assert list(caps.supported_models_per_kind) == ["image", "llm", "audio_tts", "video"]


def test_kinds_without_models_and_unknown_kinds_are_left_out() -> None:
    caps = build({"image": ["sd-cpp:*"], "llm": [], "hologram": ["h"]})
    assert caps.task_kinds == ["image"]
    assert caps.supported_models_per_kind == {"image": ["sd-cpp:*"]}
    assert caps.supported_models == ["sd-cpp:*"]


def test_supported_models_sorted_and_unique_per_kind_order_kept() -> None:
    caps = build({"image": ["zeta", "alpha", "synthetic"], "llm": ["synthetic", "beta"]})
    assert caps.supported_models == ["alpha", "beta", "synthetic", "zeta"]
    assert caps.supported_models_per_kind["image"] == ["zeta", "alpha", "synthetic"]


def test_per_kind_lists_are_copies() -> None:
    per_kind = {"image": ["a"]}
    caps = build(per_kind)
    caps.supported_models_per_kind["image"].append("b")
    assert per_kind == {"image": ["a"]}


def test_minimal_worker_example_of_section_5() -> None:
    per_kind = {
        "image": ["sd-cpp:*", "synthetic", "synthetic-image"],
        "llm": ["synthetic", "synthetic-llm"],
        "audio_stt": ["synthetic", "synthetic-stt"],
        "audio_tts": ["synthetic", "synthetic-tts"],
        "video": ["synthetic", "synthetic-video"],
    }
    obj = json.loads(encode_json(build(per_kind)))
    expected = json.loads(
        """{"engine":"multi","taskKinds":["image","llm","audio_stt","audio_tts","video"],
 "supportedModelsPerKind":{"image":["sd-cpp:*","synthetic","synthetic-image"],"llm":["synthetic","synthetic-llm"],
  "audio_stt":["synthetic","synthetic-stt"],"audio_tts":["synthetic","synthetic-tts"],"video":["synthetic","synthetic-video"]},
 "supportedModels":["sd-cpp:*","synthetic","synthetic-image","synthetic-llm","synthetic-stt","synthetic-tts","synthetic-video"]}"""
    )
    assert {k: obj[k] for k in expected} == expected


def test_snapshot_always_serialises_only_when_idle_and_omits_unknown_presence() -> None:
    obj = json.loads(encode_json(build(SYNTHETIC_PER_KIND)))
    assert obj["onlyWhenIdle"] is False
    assert obj["autoUpdate"] is True
    assert obj["startMinimised"] is True
    assert "userPresence" not in obj
    assert obj["maxConcurrentJobs"] == 1


# --- summary_line -----------------------------------------------------------------------------


def test_summary_line_exact() -> None:
    caps = build(
        {"image": ["sd-cpp:*", "synthetic"], "llm": ["synthetic"]},
        cfg=WorkerConfig(vram_threshold_gb=6),
    )
    assert summary_line(caps) == (
        "advertising engine=multi, vram=24.0/6.0GB threshold, auto_enabled=true, "
        "kinds=[image, llm], 2 model(s)=[sd-cpp:*, synthetic]"
    )


def test_summary_line_pieces() -> None:
    line = summary_line(build(SYNTHETIC_PER_KIND, cfg=WorkerConfig(vram_threshold_gb=6.0)))
    assert line.startswith("advertising engine=multi")
    assert "kinds=[" in line
    for kind in SYNTHETIC_PER_KIND:
        assert kind in line
    assert "6 model(s)=[" in line
    assert "synthetic-video" in line
    assert "/6.0GB threshold" in line
    assert "auto_enabled=true" in line


def test_summary_line_when_paused_and_with_odd_numbers() -> None:
    cfg = WorkerConfig(vram_threshold_gb=12.345)
    caps = build(SYNTHETIC_PER_KIND, paused=True, cfg=cfg)
    line = summary_line(caps)
    assert "auto_enabled=false" in line
    assert "vram=24.0/12.3GB threshold" in line


def test_summary_line_with_nothing_advertised() -> None:
    line = summary_line(build({}))
    assert line.endswith("kinds=[], 0 model(s)=[]")


def test_summary_line_for_a_fixture_engine() -> None:
    caps = build(SYNTHETIC_PER_KIND)
    caps.engine = "synthetic"
    assert "advertising engine=synthetic," in summary_line(caps)


# --- total VRAM from the GPU source ----------------------------------------------------------

GIB = 2**30


def card(index: int, total_bytes: int) -> GpuDevice:
    return GpuDevice(index, f"card {index}", f"GPU-{index}", total_bytes, 0)


@pytest.mark.parametrize(
    ("totals", "gb"),
    [
        ([], 0.0),
        ([24 * GIB], 24.0),
        ([24 * GIB, 12 * GIB], 36.0),
        ([24564 * 2**20], 23.99),  # what a 24 GB card really has, to two decimals
        ([141 * GIB + GIB // 2] * 8, 1132.0),
    ],
)
def test_advertised_total_is_every_cards_memory(totals: list[int], gb: float) -> None:
    governor = GpuGovernor(None, [card(i, t) for i, t in enumerate(totals)], GpuSettings())
    assert governor.total_gb() == gb
    assert governor.advertised_gb(12.0) == (gb, 12.0)  # no GPU slot: the config threshold


def test_total_vram_is_read_from_the_simulated_cards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(
        json.dumps(
            {
                "devices": [
                    {"index": 0, "name": "Sim 24G", "total_mib": 24576, "foreign_mib": 100},
                    {"index": 1, "name": "Sim 12G", "total_mib": 12288},
                ]
            }
        )
    )
    env = {"STUDIO_WORKER_SIMULATED_GPUS": str(gpus)}
    with prepared_gpus([], WorkerConfig(), env) as setup:
        governor = GpuGovernor(setup.source, setup.devices, setup.settings)
        assert governor.total_gb() == 36.0


def test_a_broken_simulation_stops_the_start(tmp_path: Path) -> None:
    gpus = tmp_path / "gpus.json"
    gpus.write_text("{}")
    with (
        pytest.raises(GpuReadError, match="STUDIO_WORKER_SIMULATED_GPUS"),
        prepared_gpus([], WorkerConfig(), {"STUDIO_WORKER_SIMULATED_GPUS": str(gpus)}),
    ):
        pass


def test_total_vram_is_zero_without_nvml(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the bindings do not import
    caplog.set_level(logging.INFO)
    with prepared_gpus([], WorkerConfig(), {}) as setup:
        assert setup.source is None and setup.devices == ()
        assert GpuGovernor(None, setup.devices, setup.settings).total_gb() == 0.0
    assert "no NVIDIA GPU found; advertising vram=0" in caplog.text
