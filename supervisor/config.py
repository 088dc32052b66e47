"""The worker's config file: same path, keys and defaults as the Rust worker (protocol.md §7).

An operator can swap the Rust worker for this one and keep the registration: the Rust keys
are read and written unchanged, and this worker's own keys (engine slots, restart and
recycle policy, timeouts, the model cache budget) sit beside them with documented defaults.
A save writes only the keys whose values changed: every other byte of the operator's file
(comments, order, keys this worker does not know, the Rust worker's legacy keys) stays as it
was, unlike the Rust worker, whose saves drop unknown keys. Saves are atomic and owner-only
(0600, ``supervisor.config_file``) because the file holds credentials, and ``start``
sets a file holding one with group or other permission bits to 0600, with a warning
(``secure_config``).
The Rust worker's legacy ``engines`` (a string such as ``"multi"``) shares its name with
this worker's slot list: a value that is not a list of strings is ignored with a warning.

Secrets (``auth_token``, ``registration_secret``, ``local_api_token``) never reach a log
line or an exception text: ``WorkerConfig``'s repr redacts them and parse errors report
only a position, never file content.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from supervisor.config_file import (
    UnpatchableError,
    make_private,
    patch_toml,
    render_toml,
    table_changes,
    write_private,
)
from supervisor.config_paths import CONFIG_FILE_NAME, default_models_root, expand_home
from supervisor.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL: Final = "https://studio.minis.gg/"
DEFAULT_UPDATE_FEED: Final = "https://api.github.com/repos/webbertakken/studio-worker/releases"
DEFAULT_ENGINES: Final = ("synthetic",)
REQUIRED_KEYS: Final = ("api_base_url", "vram_threshold_gb", "auto_start")
SECRET_FIELDS: Final = frozenset(
    {"auth_token", "registration_secret", "local_api_token", "telemetry_dsn"}
)
REDACTED: Final = "<redacted>"

LogFormat = Literal["text", "json"]
LaneMode = Literal["one", "per-gpu"]
LANE_MODES: Final = ("one", "per-gpu")
# One studio identity: what each lane keeps of its own (supervisor/lanes/).
IDENTITY_FIELDS: Final = (
    "install_id",
    "registration_request_id",
    "registration_secret",
    "worker_id",
    "auth_token",
)
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(gt=0)]


def _redacted_fields(struct: msgspec.Struct) -> list[tuple[str, Any]]:
    return [
        (name, REDACTED if name in SECRET_FIELDS and value is not None else value)
        for name, value in msgspec.structs.asdict(struct).items()
    ]


def _redacted_repr(struct: msgspec.Struct) -> str:
    inner = ", ".join(f"{name}={value!r}" for name, value in _redacted_fields(struct))
    return f"{type(struct).__name__}({inner})"


class LaneIdentity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ``[lane.NAME]`` table: the studio identity of a lane after the first (the first
    lane uses the top-level keys, so a one-lane registration carries over), and a lane's
    own ``vram_threshold_gb`` (``set-threshold --lane``; the first lane's too)."""

    install_id: str | None = None
    registration_request_id: str | None = None
    registration_secret: str | None = None
    worker_id: str | None = None
    auth_token: str | None = None
    vram_threshold_gb: NonNegFloat | None = None

    def without_identity(self) -> LaneIdentity | None:
        """The table once its registration is cleared (None: nothing left in it)."""
        rest = LaneIdentity(vram_threshold_gb=self.vram_threshold_gb)
        return rest if rest != LaneIdentity() else None

    def without_threshold(self) -> LaneIdentity | None:
        rest = msgspec.structs.replace(self, vram_threshold_gb=None)
        return rest if rest != LaneIdentity() else None

    def __repr__(self) -> str:
        return _redacted_repr(self)

    def __rich_repr__(self) -> Any:  # rich / typer pretty printing; msgspec's shows secrets
        yield from _redacted_fields(self)


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything in config.toml. Change it with ``replace``; save it with ``save_config``.

    The first block is the Rust worker's keys in its order; the second is this worker's.
    Defaults here are what a freshly written file contains.
    """

    # --- the Rust worker's keys (protocol.md §7) ---
    api_base_url: str = DEFAULT_API_BASE_URL
    worker_id: str | None = None
    auth_token: str | None = None
    vram_threshold_gb: float = 12.0
    auto_start: bool = True
    start_minimised: bool = True
    auto_update_enabled: bool = True
    auto_update_interval_secs: int = 1800
    auto_update_feed: str = DEFAULT_UPDATE_FEED
    auto_update_prerelease: bool = False
    models_root: Path = msgspec.field(default_factory=default_models_root)
    ws_reconnect_attempts: int | None = None
    local_api_port: int | None = None
    local_api_token: str | None = None
    only_when_idle: bool = False
    install_id: str | None = None
    registration_request_id: str | None = None
    registration_secret: str | None = None

    # --- this worker's keys ---
    engines: tuple[str, ...] = DEFAULT_ENGINES
    """Engine slot specs, e.g. ``"sdcpp@0"`` (engine on GPU 0) or ``"synthetic"``."""
    restart_backoff_base_s: PosFloat = 0.5
    restart_backoff_max_s: PosFloat = 30.0
    crash_loop_max: PosInt = 5
    crash_loop_window_s: PosFloat = 60.0
    crash_loop_cooldown_s: NonNegFloat = 300.0
    recycle_after_jobs: NonNegInt = 0
    """Restart an engine host after this many jobs; 0 = never."""
    recycle_rss_growth_mb: NonNegInt = 4096
    recycle_vram_growth_mb: NonNegInt = 2048
    job_deadline_s: PosFloat = 1800.0
    drain_grace_s: NonNegFloat = 30.0
    heartbeat_timeout_idle_s: PosFloat = 10.0
    heartbeat_timeout_busy_s: PosFloat = 30.0
    heartbeat_timeout_loading_s: PosFloat = 300.0
    ready_timeout_s: PosFloat = 120.0
    metrics_listen: str | None = None
    """``host:port`` for the Prometheus endpoint; absent = no metrics listener."""
    log_format: LogFormat = "text"
    gpu_governance: bool = True
    """Admit, place and evict by GPU memory; false only to compare (bench/vram_pressure.py)."""
    vram_headroom_mb: NonNegInt = 1024
    """Added to every load's need on top of its estimate or measured peak."""
    max_warm_models: PosInt = 1
    """Models one engine host keeps loaded; the least recently used goes first."""
    model_keep_alive_s: NonNegFloat = 0.0
    """Unload a model unused for this long; 0 = never unload for idleness."""
    vram_unload_timeout_s: PosFloat = 20.0
    """How long an unload may take to show as free memory before its host is recycled."""
    models_max_gb: NonNegFloat = 0.0
    """Disk budget of ``models_root`` in GiB; 0 = none. Least recently used files that no
    host holds are evicted before a download would exceed it."""
    download_stall_s: PosFloat = 300.0
    """A model download that receives no bytes for this long is stopped (host restarted)."""
    download_deadline_s: PosFloat = 14400.0
    """A model download still running after this long is stopped; not part of the job
    deadline, which starts when the download ends."""
    max_frame_bytes: PosInt = 16 * 2**20
    """The studio's WebSocket frame limit: a JSON result (with its echoed prompt) larger
    than this fails its job ``retryable: false`` instead of dropping the session."""
    telemetry_dsn: str | None = None
    """Sentry DSN for opt-in error telemetry (``SENTRY_DSN`` wins); a secret like the token."""
    self_install: bool = False
    """Install a newer release found by the update check (drain, install, re-exec); off:
    report only. ``auto_update_enabled`` (the Rust key) governs the check alone."""
    self_install_probation_s: PosFloat = 300.0
    """A new release that reaches no studio ``welcome`` within this is rolled back."""
    lanes: LaneMode = "one"
    """``one``: one studio identity serves every slot (the Rust worker's way); ``per-gpu``:
    one identity (lane) per GPU index in ``engines``, so the studio, which offers a worker
    one job at a time, keeps every GPU busy."""
    lane: dict[str, LaneIdentity] = msgspec.field(default_factory=dict)
    """The identities of the lanes after the first, as ``[lane.gpu1]`` tables. Last: TOML
    tables must follow every top-level key."""

    @property
    def has_credentials(self) -> bool:
        """Both ``worker_id`` and ``auth_token`` set and non-empty (registration done)."""
        return bool(self.worker_id) and bool(self.auth_token)

    def replace(self, **changes: Any) -> WorkerConfig:
        """A copy with ``changes`` applied (the struct is frozen)."""
        return msgspec.structs.replace(self, **changes)

    def __repr__(self) -> str:
        return _redacted_repr(self)

    def __rich_repr__(self) -> Any:  # rich / typer pretty printing; msgspec's shows secrets
        yield from _redacted_fields(self)


_TOML_POSITION: Final = re.compile(r"\((at line \d+, column \d+|at end of document)\)")
_QUOTED: Final = re.compile(r"'[^']*'")


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise TypeError(f"expected a path string, got {type(value).__name__}")


def _encode_path(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError


def _toml_error_position(exc: tomllib.TOMLDecodeError) -> str:
    """Only where the error is: the parser's message may quote file content (a secret)."""
    match = _TOML_POSITION.search(str(exc))
    return match.group(1) if match else "at an unknown position"


def _toml_type(value: object) -> str:
    """A TOML value's kind, for a message that must not show the value itself."""
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
    )
    return next((name for kind, name in kinds if isinstance(value, kind)), "date or time")


def _is_slot_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _drop_legacy_engines(raw: dict[str, Any], path: Path, quiet: bool) -> None:
    """The Rust worker's ``engines`` (e.g. ``"multi"``) is not our slot list: use ours."""
    if "engines" not in raw or _is_slot_list(raw["engines"]):
        return
    kind = _toml_type(raw.pop("engines"))
    if not quiet:
        log.warning(
            "config: ignoring `engines` (a %s) in %s: this worker's `engines` is a list of "
            'engine slots such as ["sdcpp@0", "llama"] (a Rust worker\'s legacy value is '
            "left in the file); using %s",
            kind,
            path,
            list(DEFAULT_ENGINES),
        )


def _decode(path: Path, data: bytes, *, quiet: bool = False) -> WorkerConfig:
    """Decode file bytes; every error text carries the path and a category, no content.
    ``quiet``: no log lines about ignored keys (a save re-reads what a load reported)."""
    where = f"parsing {CONFIG_FILE_NAME} ({path})"
    detail: str | None = None
    raw: dict[str, Any] = {}
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        detail = "not valid UTF-8"
    except tomllib.TOMLDecodeError as exc:
        detail = f"invalid TOML {_toml_error_position(exc)}"
    if detail is None:
        missing = [key for key in REQUIRED_KEYS if key not in raw]
        if missing:
            detail = f"missing field `{missing[0]}`"
    if detail is None:
        unknown = sorted(set(raw) - set(WorkerConfig.__struct_fields__))
        if unknown and not quiet:
            log.debug("config: ignoring unknown keys %s path=%s", ", ".join(unknown), path)
        _drop_legacy_engines(raw, path, quiet)
        if isinstance(raw.get("models_root"), str):
            raw["models_root"] = expand_home(raw["models_root"])
        try:
            return msgspec.convert(raw, WorkerConfig, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            detail = _QUOTED.sub("'…'", str(exc))
    raise ConfigError(f"{where}: {detail}")


def _parse(path: Path, data: bytes) -> WorkerConfig:
    try:
        return _decode(path, data)
    except ConfigError:
        log.warning("config: %s is invalid path=%s", CONFIG_FILE_NAME, path)
        raise


def load_config(path: Path) -> WorkerConfig:
    """Read config.toml at ``path``; a missing file is created with the defaults.

    Raises ConfigError: ``reading config.toml (...)`` when the file cannot be read,
    ``parsing config.toml (...)`` when it is not a valid config, ``saving config.toml (...)``
    when the defaults cannot be written.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        cfg = WorkerConfig()
        save_config(path, cfg)
        log.info('config loaded source="default_created" path=%s', path)
        return cfg
    except OSError as exc:
        log.warning("config: cannot read path=%s error=%s", path, exc.strerror)
        raise ConfigError(f"reading {CONFIG_FILE_NAME} ({path}): {exc.strerror}") from None
    cfg = _parse(path, data)
    log.debug('config loaded source="existing_file" path=%s', path)
    return cfg


def holds_secret(cfg: WorkerConfig) -> bool:
    """A token or secret at the top level or in any lane's table."""
    tables = [cfg, *cfg.lane.values()]
    return any(getattr(t, name, None) for t in tables for name in SECRET_FIELDS)


def current_config(path: Path) -> WorkerConfig:
    """What the file holds now, read without log lines (a save's base); the defaults when
    there is no file. Raises ConfigError like ``load_config``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return WorkerConfig()
    except OSError as exc:
        raise ConfigError(f"reading {CONFIG_FILE_NAME} ({path}): {exc.strerror}") from None
    return _decode(path, data, quiet=True)


def secure_config(path: Path, cfg: WorkerConfig) -> None:
    """Set the file to 0600, with a warning, when it holds a secret (``cfg`` was loaded from
    it) and grants group or other bits. Called where a worker starts, once its logging is
    set up, and when the running worker re-reads the file: that is where the operator
    looks for the warning."""
    make_private(path, holds_secret=holds_secret(cfg))


def _file_values(cfg: WorkerConfig) -> dict[str, Any]:
    """Every field as TOML-ready builtins (paths as strings); unset optional keys None."""
    values: dict[str, Any] = msgspec.to_builtins(cfg, enc_hook=_encode_path)
    return values


def changed_values(before: WorkerConfig, after: WorkerConfig) -> dict[str, Any | None]:
    """The fields whose value differs, as file values (None: remove the key), field order;
    for a table (``lane``) only the keys that differ inside it."""
    return table_changes(_file_values(before), _file_values(after))


def render_config(cfg: WorkerConfig) -> str:
    """The TOML text of a fresh file for ``cfg`` (unset optional keys omitted); includes
    secrets."""
    return render_toml({k: v for k, v in _file_values(cfg).items() if v not in (None, {})})


def _patched(path: Path, cfg: WorkerConfig, previous: WorkerConfig | None) -> bytes:
    """The file's bytes with only the changed keys rewritten, or a fresh rendering when
    there is no file, or one that cannot be edited in place. Raises OSError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return render_config(cfg).encode("utf-8")
    try:
        base = previous if previous is not None else _decode(path, data, quiet=True)
        return patch_toml(data.decode("utf-8"), changed_values(base, cfg)).encode("utf-8")
    except (ConfigError, UnicodeDecodeError, UnpatchableError):
        # Credentials must land in a file that loads; the broken one cannot keep its style.
        log.warning("config: %s is not a valid config; rewriting it whole", path)
        return render_config(cfg).encode("utf-8")


def save_config(path: Path, cfg: WorkerConfig, *, previous: WorkerConfig | None = None) -> None:
    """Write ``cfg`` to ``path``, atomically and with mode 0600; parent directories are
    created. Only keys whose value differs from ``previous`` (default: what the file holds
    now) are rewritten; the rest of the file stays byte for byte.

    Raises ConfigError ``saving config.toml (...)``; no temp file is left behind either way.
    """
    try:
        write_private(path, _patched(path, cfg, previous))
    except OSError as exc:
        log.warning("config: save failed path=%s error=%s", path, exc.strerror)
        raise ConfigError(f"saving {CONFIG_FILE_NAME} ({path}): {exc.strerror}") from None
    log.debug("config saved path=%s", path)
