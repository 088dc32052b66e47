"""Each lane's view of config.toml and what a lane saves: the first lane's identity at the
top level (a one-lane registration carries over), the others in ``[lane.NAME]`` tables of
the same file, every other byte of the operator's file kept."""

from __future__ import annotations

import stat
from pathlib import Path

from rich.pretty import pretty_repr

from supervisor.config import LaneIdentity, WorkerConfig, load_config, save_config, secure_config
from supervisor.lane_identity import lane_view, save_lane_config
from supervisor.live_config import LiveConfig

OPERATOR_FILE = """\
# my worker
api_base_url = "http://127.0.0.1:9790/"  # the local studio
worker_id = "w-1"
auth_token = "tok-first-SECRET"
vram_threshold_gb = 20.0
auto_start = true
lanes = "per-gpu"
my_own_key = 7

[lane.gpu1]
worker_id = "w-2"  # approved on Monday
auth_token = "tok-gpu1-SECRET"
"""


def operator_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(OPERATOR_FILE)
    path.chmod(0o600)
    return path


def test_lane_tables_load_and_each_lane_sees_its_own_identity(tmp_path: Path) -> None:
    cfg = load_config(operator_file(tmp_path))
    assert cfg.lanes == "per-gpu"
    assert cfg.lane == {"gpu1": LaneIdentity(worker_id="w-2", auth_token="tok-gpu1-SECRET")}
    first, second, third = (lane_view(cfg, t) for t in (None, "gpu1", "gpu2"))
    assert (first.worker_id, first.auth_token) == ("w-1", "tok-first-SECRET")
    assert (second.worker_id, second.auth_token) == ("w-2", "tok-gpu1-SECRET")
    assert (third.worker_id, third.auth_token, third.install_id) == (None, None, None)
    assert second.api_base_url == first.api_base_url  # the rest is every lane's
    assert "tok-gpu1-SECRET" not in repr(cfg)
    assert "tok-gpu1-SECRET" not in pretty_repr(cfg)  # rich's printing (typer's tracebacks)


def test_a_lane_saves_only_its_identity_into_its_table(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    cfg = load_config(path)
    before = lane_view(cfg, "gpu2")
    registered = before.replace(install_id="inst-3", registration_secret="sec-3-SECRET")
    save_lane_config(path, "gpu2", registered, before)
    text = path.read_text()
    assert text.startswith(OPERATOR_FILE.rstrip("\n"))  # every byte before it kept
    assert '[lane.gpu2]\ninstall_id = "inst-3"\nregistration_secret = "sec-3-SECRET"' in text
    # The first lane's save changes its top-level keys alone, comments kept.
    first = lane_view(load_config(path), None)
    save_lane_config(path, None, first.replace(worker_id="w-9"), first)
    text = path.read_text()
    assert 'worker_id = "w-9"\n' in text
    assert 'worker_id = "w-2"  # approved on Monday' in text
    assert "my_own_key = 7" in text and "# my worker" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_lane_live_config_reads_and_writes_its_own_table(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    live = LiveConfig(path, table="gpu1", lane="gpu1")
    assert live.current().worker_id == "w-2"
    updated = live.update(worker_id=None, auth_token=None)
    assert (updated.worker_id, updated.auth_token) == (None, None)
    cfg = load_config(path)
    assert "gpu1" not in cfg.lane, "an emptied table goes"
    assert cfg.worker_id == "w-1"


def test_a_lane_threshold_overrides_the_top_level_one_for_that_lane_only(tmp_path: Path) -> None:
    cfg = WorkerConfig(vram_threshold_gb=20.0, lane={"gpu0": LaneIdentity(vram_threshold_gb=8.0)})
    assert lane_view(cfg, None, "gpu0").vram_threshold_gb == 8.0
    assert lane_view(cfg, "gpu1").vram_threshold_gb == 20.0


def test_a_token_only_in_a_lane_table_still_makes_the_file_private(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    cfg = WorkerConfig(lane={"gpu1": LaneIdentity(worker_id="w-2", auth_token="tok-SECRET")})
    save_config(path, cfg)
    path.chmod(0o644)
    secure_config(path, load_config(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_fresh_file_has_no_lane_table(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_config(path, WorkerConfig())
    assert "[lane" not in path.read_text()
    assert load_config(path).lane == {}


def test_a_lane_save_keeps_what_else_the_operator_has_in_lane_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        OPERATOR_FILE.replace('auth_token = "tok-gpu1-SECRET"\n', 'note = "rack 4"\n')
        + '\n[notes]\nowner = "ops"\n\n[lane.gpu2]\nworker_id = "w-3"\n'
    )
    cfg = load_config(path)  # a table between two lane tables: tomlkit's out-of-order case
    for table, changes in (("gpu2", {"auth_token": "tok-3"}), ("gpu1", {"worker_id": None})):
        view = lane_view(load_config(path), table)
        save_lane_config(path, table, view.replace(**changes), view)
    text = path.read_text()
    assert 'note = "rack 4"' in text, "a key of the operator's in a lane table stays"
    assert '[notes]\nowner = "ops"' in text
    cfg = load_config(path)
    assert cfg.lane["gpu2"] == LaneIdentity(worker_id="w-3", auth_token="tok-3")
    assert cfg.lane["gpu1"] == LaneIdentity()
