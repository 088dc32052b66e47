"""Which config ``start --local`` may point at its own studio: pure rules, no I/O.

The local worker must never overwrite another studio's registration. A config that holds
registration state (a worker id, token, pending request or install id) for a studio that is
not on this machine's loopback is refused before anything starts (LocalConfigConflict); the
operator runs ``start --local`` without ``--config``, which uses a config of its own beside
the default one. A loopback studio is taken to be a local studio: when its address changed
(another port) the old registration is void there and is cleared, as a fresh local studio
would not know it anyway.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from supervisor.config import IDENTITY_FIELDS, WorkerConfig
from supervisor.config_paths import default_config_path
from supervisor.errors import LocalConfigConflict


def local_config_path() -> Path:
    """``start --local``'s own config (and its studio's data beside it), next to the default."""
    return default_config_path().parent / "local" / "config.toml"


def studio_data_dir(config_path: Path) -> Path:
    """Where the owned studio keeps its database and assets: beside its config."""
    return config_path.parent / "studio"


def is_loopback_url(url: str) -> bool:
    """An http(s) URL on 127.0.0.0/8, ::1 or ``localhost``: a studio on this machine."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def holds_registration(cfg: WorkerConfig) -> bool:
    """Registration state at the top level or in any lane's ``[lane.NAME]`` table."""
    tables = [cfg, *cfg.lane.values()]
    return any(getattr(table, name) for table in tables for name in IDENTITY_FIELDS)


def check_owned_config(cfg: WorkerConfig, config_path: Path) -> None:
    """Refuse a config registered (or registering) with a studio elsewhere; raises
    LocalConfigConflict. A fresh config, or one of a loopback studio, is the local one's."""
    if holds_registration(cfg) and not is_loopback_url(cfg.api_base_url):
        raise LocalConfigConflict(config_path, cfg.api_base_url, local_config_path())


def pointed_at(cfg: WorkerConfig, studio_url: str) -> WorkerConfig | None:
    """``cfg`` with ``api_base_url`` set to the owned studio, or None when it already is.
    Another address means another studio, where the old credentials (every lane's) are
    void: cleared."""
    base = studio_url.rstrip("/") + "/"
    if cfg.api_base_url == base:
        return None
    kept = {name: t.without_identity() for name, t in cfg.lane.items()}  # thresholds stay
    lanes = {name: t for name, t in kept.items() if t is not None}
    return cfg.replace(api_base_url=base, lane=lanes, **dict.fromkeys(IDENTITY_FIELDS))
