"""protocol.md §7: config path, defaults, round trip, atomic 0600 saves, secret hygiene."""

from __future__ import annotations

import logging
import stat
import tomllib
from pathlib import Path

import pytest

from supervisor.config import (
    DEFAULT_API_BASE_URL,
    WorkerConfig,
    load_config,
    render_config,
    save_config,
)
from supervisor.config_paths import default_config_path
from supervisor.errors import ConfigError

SECRETS = {
    "auth_token": "tok-SECRET-aaaa",
    "registration_secret": "reg-SECRET-bbbb",
    "local_api_token": "api-SECRET-cccc",
}
WITH_SECRETS = WorkerConfig(
    auth_token=SECRETS["auth_token"],
    registration_secret=SECRETS["registration_secret"],
    local_api_token=SECRETS["local_api_token"],
)
MINIMAL = 'api_base_url = "https://studio.example/"\nvram_threshold_gb = 8\nauto_start = false\n'


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_no_secret_in(records: list[logging.LogRecord], *secrets: str) -> None:
    for record in records:
        text = record.getMessage() + repr(record.args) + str(record.exc_info)
        for secret in secrets:
            assert secret not in text, f"secret leaked in log record: {record.msg!r}"


# --- path ---------------------------------------------------------------------------------


def test_default_path_honours_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_config_path() == tmp_path / "xdg" / "minis-studio-worker" / "config.toml"


@pytest.mark.parametrize("xdg", ["", "relative/dir"])
def test_default_path_falls_back_to_home_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: str
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = default_config_path()
    assert path == tmp_path / ".config" / "minis-studio-worker" / "config.toml"
    assert "minis-studio-worker" in str(path)
    assert path.name == "config.toml"


# --- load / defaults ----------------------------------------------------------------------


def test_missing_file_writes_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "deep" / "dir" / "config.toml"
    with caplog.at_level(logging.DEBUG, logger="supervisor.config"):
        cfg = load_config(path)
    assert cfg == WorkerConfig()
    assert path.is_file()
    assert mode_of(path) == 0o600
    assert 'source="default_created"' in caplog.text
    written = tomllib.loads(path.read_text())
    assert written["api_base_url"] == DEFAULT_API_BASE_URL
    assert written["vram_threshold_gb"] == 12.0
    assert written["auto_start"] is True
    assert "worker_id" not in written  # unset optional keys are omitted
    assert load_config(path) == cfg


def test_defaults_match_the_rust_worker_and_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    cfg = WorkerConfig()
    assert cfg.api_base_url == "https://studio.minis.gg/"
    assert (cfg.vram_threshold_gb, cfg.auto_start, cfg.start_minimised) == (12.0, True, True)
    assert (cfg.auto_update_enabled, cfg.auto_update_interval_secs) == (True, 1800)
    assert cfg.auto_update_feed.endswith("/webbertakken/studio-worker/releases")
    assert cfg.auto_update_prerelease is False
    assert cfg.models_root == Path("/home/op/models")
    assert cfg.ws_reconnect_attempts is None
    assert cfg.only_when_idle is False
    assert cfg.engines == ("synthetic",)
    assert (cfg.restart_backoff_base_s, cfg.restart_backoff_max_s) == (0.5, 30.0)
    assert (cfg.crash_loop_max, cfg.crash_loop_window_s, cfg.crash_loop_cooldown_s) == (
        5,
        60.0,
        300.0,
    )
    assert (cfg.recycle_after_jobs, cfg.recycle_rss_growth_mb, cfg.recycle_vram_growth_mb) == (
        0,
        4096,
        2048,
    )
    assert (cfg.job_deadline_s, cfg.drain_grace_s, cfg.ready_timeout_s) == (1800.0, 30.0, 120.0)
    assert (
        cfg.heartbeat_timeout_idle_s,
        cfg.heartbeat_timeout_busy_s,
        cfg.heartbeat_timeout_loading_s,
    ) == (10.0, 30.0, 300.0)
    assert cfg.metrics_listen is None
    assert cfg.log_format == "text"


def test_existing_file_loads_with_defaults_for_optional_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL)
    with caplog.at_level(logging.DEBUG, logger="supervisor.config"):
        cfg = load_config(path)
    assert cfg.api_base_url == "https://studio.example/"
    assert cfg.vram_threshold_gb == 8.0
    assert cfg.auto_start is False
    assert cfg.start_minimised is True  # old files predate the key
    assert cfg.engines == ("synthetic",)
    assert 'source="existing_file"' in caplog.text
    assert path.read_text() == MINIMAL  # loading never rewrites an existing file


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    cfg = WorkerConfig(
        api_base_url="http://localhost:9790/graphics/api/",
        worker_id="w-42",
        vram_threshold_gb=20.5,
        auto_start=False,
        start_minimised=False,
        auto_update_enabled=False,
        auto_update_interval_secs=60,
        auto_update_feed="https://example.invalid/feed",
        auto_update_prerelease=True,
        models_root=tmp_path / "models",
        ws_reconnect_attempts=3,
        local_api_port=9791,
        only_when_idle=True,
        install_id="11111111-2222-3333-4444-555555555555",
        registration_request_id="rr-1",
        engines=("sdcpp@0", "llama@1", "synthetic"),
        restart_backoff_base_s=1.0,
        restart_backoff_max_s=10.0,
        crash_loop_max=3,
        crash_loop_window_s=30.0,
        crash_loop_cooldown_s=0.0,
        recycle_after_jobs=100,
        recycle_rss_growth_mb=1024,
        recycle_vram_growth_mb=512,
        job_deadline_s=600.0,
        drain_grace_s=5.0,
        heartbeat_timeout_idle_s=5.0,
        heartbeat_timeout_busy_s=15.0,
        heartbeat_timeout_loading_s=600.0,
        ready_timeout_s=60.0,
        metrics_listen="127.0.0.1:9464",
        log_format="json",
        auth_token=SECRETS["auth_token"],
        registration_secret=SECRETS["registration_secret"],
        local_api_token=SECRETS["local_api_token"],
    )
    save_config(path, cfg)
    assert load_config(path) == cfg


def test_unknown_and_legacy_keys_load_and_stay_on_save(tmp_path: Path) -> None:
    # The Rust worker drops them on save; this worker keeps every byte it did not change.
    path = tmp_path / "config.toml"
    legacy = (
        'engine = "synthetic"\nauto_enabled = false\nlabel = "desk"\n'
        'bootstrap_token = "bt"\ngradio_endpoint_url = "http://x"\n'
        'supported_models_override = ["a"]\ntotally_new_key = 1\n'
    )
    path.write_text(MINIMAL + legacy)
    cfg = load_config(path)
    save_config(path, cfg.replace(worker_id="w-1"))
    written = tomllib.loads(path.read_text())
    for key in ("engine", "auto_enabled", "label", "bootstrap_token", "totally_new_key"):
        assert key in written
    assert written["worker_id"] == "w-1"
    assert "engines" not in written  # our key, unchanged from its default: not written


@pytest.mark.parametrize("missing", ["api_base_url", "vram_threshold_gb", "auto_start"])
def test_required_keys(tmp_path: Path, missing: str) -> None:
    path = tmp_path / "config.toml"
    lines = [line for line in MINIMAL.splitlines() if not line.startswith(missing)]
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=f"parsing config.toml .*missing field `{missing}`"):
        load_config(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("~/m", "{home}/m"), ("~", "{home}"), ("~other/m", "~other/m"), ("/abs/m", "/abs/m")],
)
def test_models_root_home_expansion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL + f'models_root = "{value}"\n')
    assert load_config(path).models_root == Path(expected.format(home=tmp_path / "home"))


def test_our_keys_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL + "crash_loop_max = 0\n")
    with pytest.raises(ConfigError, match=r"parsing config.toml .*\$\.crash_loop_max"):
        load_config(path)


# --- errors never echo content -------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        f'auth_token = "{SECRETS["auth_token"]}\n',  # unterminated string
        f"registration_secret = {SECRETS['registration_secret']}\n",  # bare word
        f'local_api_token = "{SECRETS["local_api_token"]}\x01"\n',  # illegal character
        f'auth_token = "{SECRETS["auth_token"]}"\nauth_token = "x"\n',  # duplicate key
    ],
)
def test_invalid_toml_error_never_echoes_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL + broken)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as excinfo:
        load_config(path)
    text = str(excinfo.value)
    assert "parsing config.toml" in text
    assert str(path) in text
    assert "invalid TOML at line" in text
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__context__ is None
    for secret in SECRETS.values():
        assert secret not in text
        assert secret[-4:] not in text
    assert_no_secret_in(caplog.records, *SECRETS.values())
    assert any(r.levelno == logging.WARNING and str(path) in r.getMessage() for r in caplog.records)


def test_wrong_type_names_the_key_not_the_value(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL.replace("= 8", '= "lots"') + 'log_format = "SECRETISH"\n')
    with pytest.raises(ConfigError, match=r"parsing config.toml .*\$\.vram_threshold_gb"):
        load_config(path)
    path.write_text(MINIMAL + 'log_format = "SECRETISH"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert "$.log_format" in str(excinfo.value)
    assert "SECRETISH" not in str(excinfo.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(MINIMAL.encode() + b'auth_token = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match=r"parsing config\.toml .*not valid UTF-8"):
        load_config(path)


def test_unreadable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.toml"
    path.mkdir()
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(ConfigError, match=r"reading config\.toml"),
    ):
        load_config(path)
    assert str(path) in caplog.text


# --- saving --------------------------------------------------------------------------------


def test_save_is_0600_even_over_a_0644_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL)
    path.chmod(0o644)
    save_config(path, WITH_SECRETS)
    assert mode_of(path) == 0o600


def test_atomic_save_leaves_only_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "cfgdir" / "config.toml"
    for threshold in (1.0, 2.0, 3.0):
        save_config(path, WorkerConfig(vram_threshold_gb=threshold))
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]
    assert load_config(path).vram_threshold_gb == 3.0


def test_save_failure_is_a_config_error_and_leaves_no_litter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match=r"saving config\.toml"):
        save_config(blocker / "config.toml", WITH_SECRETS)
    assert_no_secret_in(caplog.records, *SECRETS.values())
    # A failing rename (target is a non-empty directory) must not leave the temp file behind.
    target = tmp_path / "cfg" / "config.toml"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"saving config\.toml"):
        save_config(target, WorkerConfig())
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.toml"]


def test_render_omits_unset_keys_and_keeps_rust_keys_first() -> None:
    text = render_config(WorkerConfig(worker_id="w-1"))
    keys = [line.split(" = ")[0] for line in text.splitlines() if " = " in line]
    assert keys[:4] == ["api_base_url", "worker_id", "vram_threshold_gb", "auto_start"]
    assert "auth_token" not in keys
    assert "metrics_listen" not in keys


# --- redaction -----------------------------------------------------------------------------


def test_repr_redacts_secrets(caplog: pytest.LogCaptureFixture) -> None:
    cfg = WITH_SECRETS.replace(worker_id="w-visible")
    for text in (repr(cfg), str(cfg), f"{cfg}", repr([cfg])):
        assert "w-visible" in text
        assert "<redacted>" in text
        for secret in SECRETS.values():
            assert secret not in text
    rich_fields = dict(cfg.__rich_repr__())
    assert rich_fields["auth_token"] == "<redacted>"
    assert rich_fields["worker_id"] == "w-visible"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("config is %r / %s", cfg, cfg)
    assert caplog.records
    assert_no_secret_in(caplog.records, *SECRETS.values())


def test_repr_shows_unset_secrets_as_none() -> None:
    assert "auth_token=None" in repr(WorkerConfig())


def test_load_and_save_never_log_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.toml"
    with caplog.at_level(logging.DEBUG):
        save_config(path, WITH_SECRETS)
        load_config(path)
    assert caplog.records
    assert_no_secret_in(caplog.records, *SECRETS.values())


def test_replace_returns_a_new_frozen_value() -> None:
    cfg = WorkerConfig()
    changed = cfg.replace(worker_id="w", auth_token="t")
    assert cfg.worker_id is None
    assert changed.has_credentials
    assert not cfg.replace(worker_id="w", auth_token="").has_credentials
    with pytest.raises(AttributeError):
        cfg.worker_id = "x"  # type: ignore[misc]
