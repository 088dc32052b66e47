"""The command line of lanes, as real processes: ``--lanes`` refusals before anything
starts, and the per-lane config commands (``register --reset --lane``, ``set-threshold
--lane``) changing only their lane's keys."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import LaneIdentity, WorkerConfig, load_config, save_config
from supervisor.exit_codes import ExitCode
from tests.supervisor.cli.test_cli_errors import assert_one_error, cli

PER_GPU = ("synthetic@0", "synthetic@1")


def lanes_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    save_config(
        path,
        WorkerConfig(
            api_base_url="http://127.0.0.1:9/",
            worker_id="w-1",
            auth_token="tok-1-SECRET",
            install_id="inst-1",
            lanes="per-gpu",
            engines=PER_GPU,
            lane={
                "gpu1": LaneIdentity(
                    worker_id="w-2", auth_token="tok-2-SECRET", install_id="inst-2"
                )
            },
        ),
    )
    return path


def test_a_bad_lanes_value_is_refused(tmp_path: Path) -> None:
    config = lanes_config(tmp_path)
    done = cli(tmp_path, "--config", str(config), "start", "--lanes", "per-card")
    line = assert_one_error(done, ExitCode.USAGE)
    assert "--lanes must be one of one, per-gpu, got 'per-card'" in line


def test_per_gpu_lanes_refuse_a_slot_on_no_gpu_before_any_host_starts(tmp_path: Path) -> None:
    config = lanes_config(tmp_path)
    done = cli(
        tmp_path, "--config", str(config), "start", "--lanes", "per-gpu", "--engines", "llama"
    )
    line = assert_one_error(done, ExitCode.USAGE)
    assert "--lanes per-gpu needs every slot on a GPU (engine@N), but `llama` names none" in line


def test_register_reset_lane_clears_that_lane_only(tmp_path: Path) -> None:
    config = lanes_config(tmp_path)
    done = cli(tmp_path, "--config", str(config), "register", "--reset", "--lane", "gpu1")
    assert done.returncode == 0, done.stderr
    assert "lane gpu1's registration state cleared" in done.stdout
    cfg = load_config(config)
    assert (cfg.worker_id, cfg.install_id) == ("w-1", "inst-1")
    assert "gpu1" not in cfg.lane
    # The first lane (lowest GPU) is the top-level identity.
    done = cli(tmp_path, "--config", str(config), "register", "--reset", "--lane", "gpu0")
    assert done.returncode == 0, done.stderr
    assert load_config(config).worker_id is None


def test_register_reset_without_a_lane_clears_every_lane(tmp_path: Path) -> None:
    config = lanes_config(tmp_path)
    done = cli(tmp_path, "--config", str(config), "register", "--reset")
    assert done.returncode == 0, done.stderr
    cfg = load_config(config)
    assert (cfg.worker_id, cfg.lane) == (None, {})
    assert "tok-2-SECRET" not in config.read_text()


def test_a_lane_this_worker_does_not_have_is_refused(tmp_path: Path) -> None:
    config = lanes_config(tmp_path)
    done = cli(tmp_path, "--config", str(config), "register", "--reset", "--lane", "gpu5")
    line = assert_one_error(done, ExitCode.USAGE)
    assert f"no lane `gpu5` for {config}; the lanes are gpu0, gpu1" in line
    assert load_config(config).lane["gpu1"].worker_id == "w-2"
    done = cli(tmp_path, "--config", str(config), "register", "--lane", "gpu1")
    assert "--lane goes with --reset" in assert_one_error(done, ExitCode.USAGE)


def test_set_threshold_for_one_lane_and_then_for_every_lane(tmp_path: Path) -> None:
    config = lanes_config(tmp_path)
    done = cli(tmp_path, "--config", str(config), "set-threshold", "8", "--lane", "gpu0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[lane.gpu0] vram_threshold_gb = 8"
    cfg = load_config(config)
    assert cfg.lane["gpu0"].vram_threshold_gb == 8.0 and cfg.vram_threshold_gb == 12.0
    assert "[lane.gpu0]\nvram_threshold_gb = 8" in config.read_text()
    done = cli(tmp_path, "--config", str(config), "set-threshold", "20")
    assert done.returncode == 0, done.stderr
    cfg = load_config(config)
    assert cfg.vram_threshold_gb == 20.0
    assert "gpu0" not in cfg.lane, "every lane's own value goes"
    assert cfg.lane["gpu1"].worker_id == "w-2"


def test_a_lane_the_config_cannot_name_is_refused_not_guessed(tmp_path: Path) -> None:
    # Lanes set by flag only: with no supervisor to ask, the config makes one lane, `main`;
    # a table holding only gpu0's threshold is no identity to clear.
    path = tmp_path / "config.toml"
    save_config(
        path,
        WorkerConfig(
            worker_id="w-1",
            auth_token="tok-1-SECRET",
            lane={"gpu0": LaneIdentity(vram_threshold_gb=8.0)},
        ),
    )
    done = cli(tmp_path, "--config", str(path), "register", "--reset", "--lane", "gpu0")
    line = assert_one_error(done, ExitCode.USAGE)
    assert "no lane `gpu0`" in line and "the lanes are main" in line
    assert "start it, or set `lanes` and `engines` in the config" in line
    assert load_config(path).worker_id == "w-1", "nothing cleared"
