"""The capability snapshot and its one-line summary (protocol.md §5, §2.6 step 3), and the
host facts behind it: nvidia-smi and sysfs VRAM parsing (§9.6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.studio import Capabilities, encode_json
from supervisor import __version__
from supervisor.config import WorkerConfig
from supervisor.machine_facts import parse_nvidia_smi_mib, sysfs_vram_mib
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
    monkeypatch.setattr(caps_module, "total_vram_gb", lambda: 24.0)


def build(
    per_kind: dict[str, list[str]],
    *,
    paused: bool = False,
    cfg: WorkerConfig | None = None,
    jobs: int = 1,
) -> Capabilities:
    return build_capabilities(
        cfg or WorkerConfig(), per_kind, paused=paused, max_concurrent_jobs=jobs
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


# --- nvidia-smi -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("24576\n", (24576.0, 0)),
        ("24576\n12288\n", (36864.0, 0)),
        ("24576 MiB\n8192 MiB\n", (32768.0, 0)),
        ("24576\r\n12288\r\n", (36864.0, 0)),
        ("[N/A]\n8192\n", (8192.0, 1)),
        ("[N/A]\r\n[N/A]\r\n", (0.0, 2)),
        ("", (0.0, 0)),
        ("\n  \n", (0.0, 0)),
        ("  16384  \n", (16384.0, 0)),
        ("garbage\n4096\n", (4096.0, 1)),
    ],
)
def test_parse_nvidia_smi(output: str, expected: tuple[float, int]) -> None:
    assert parse_nvidia_smi_mib(output) == expected


# --- sysfs --------------------------------------------------------------------------------------


def gpu(root: Path, name: str, text: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "information").write_text(text)


def info(memory: str) -> str:
    return f"Model:           NVIDIA GeForce RTX\nIRQ:             42\nVideo Memory:    {memory}\n"


def test_sysfs_sums_every_gpu(tmp_path: Path) -> None:
    gpu(tmp_path, "0000:01:00.0", info("12288 MiB"))
    gpu(tmp_path, "0000:02:00.0", info("24576 MiB"))
    mib = sysfs_vram_mib(tmp_path)
    assert mib == 36864.0
    assert mib is not None and mib / 1024 == 36.0


@pytest.mark.parametrize(
    ("memory", "mib"),
    [
        ("12288 MiB", 12288.0),
        ("12288 MB", 12288.0),
        ("12 GiB", 12288.0),
        ("12 GB", 12288.0),
        ("12 gb", 12288.0),
        ("8192", 8192.0),  # no unit: MiB
        ("8192 bananas", 8192.0),  # unknown unit: the raw number
        ("1.5 GiB", 1536.0),
    ],
)
def test_sysfs_units(tmp_path: Path, memory: str, mib: float) -> None:
    gpu(tmp_path, "0000:01:00.0", info(memory))
    assert sysfs_vram_mib(tmp_path) == mib


def test_sysfs_missing_dir_is_none(tmp_path: Path) -> None:
    assert sysfs_vram_mib(tmp_path / "nope") is None


def test_sysfs_nothing_parseable_is_none(tmp_path: Path) -> None:
    gpu(tmp_path, "0000:01:00.0", "Model: X\nVideo Memory: unknown\n")
    assert sysfs_vram_mib(tmp_path) is None
    assert sysfs_vram_mib(tmp_path / "0000:01:00.0") is None  # no */information below


def test_sysfs_unreadable_gpu_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gpu(tmp_path, "0000:01:00.0", info("12 GiB"))
    (tmp_path / "0000:02:00.0" / "information").mkdir(parents=True)  # read_text fails
    assert sysfs_vram_mib(tmp_path) == 12288.0
    assert "unreadable GPU information file" in caplog.text
