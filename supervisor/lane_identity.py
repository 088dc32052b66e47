"""Each lane's view of config.toml, and saving what a lane changes of its identity.

The first lane is the Rust worker's identity: the top-level keys (``worker_id``,
``auth_token``, ``install_id``, ...), so a one-lane registration carries over when the
operator turns lanes on. Every other lane keeps the same keys in a ``[lane.NAME]`` table of
the same file. A lane's view is the whole config with its identity in the top-level
fields, so registration and the session read one shape whichever lane they serve; a save
writes back only the identity fields the lane changed, into its own table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from supervisor.config import (
    IDENTITY_FIELDS,
    LaneIdentity,
    WorkerConfig,
    current_config,
    save_config,
)


def lane_view(cfg: WorkerConfig, table: str | None, name: str | None = None) -> WorkerConfig:
    """``cfg`` as a lane sees it: the identity in ``[lane.<table>]`` (None: the first lane,
    the top-level keys), and the ``vram_threshold_gb`` of ``[lane.<name>]`` when it has one
    (``name`` defaults to ``table``; the first lane may keep a threshold there too)."""
    changes: dict[str, object] = {}
    if table is not None:
        identity = cfg.lane.get(table, LaneIdentity())
        changes = {field: getattr(identity, field) for field in IDENTITY_FIELDS}
    own = cfg.lane.get(name or table or "")
    if own is not None and own.vram_threshold_gb is not None:
        changes["vram_threshold_gb"] = own.vram_threshold_gb
    return cfg.replace(**changes) if changes else cfg


def identity_changes(before: WorkerConfig, after: WorkerConfig) -> dict[str, str | None]:
    """The identity fields that differ between two views of one lane."""
    return {
        name: getattr(after, name)
        for name in IDENTITY_FIELDS
        if getattr(after, name) != getattr(before, name)
    }


def with_identity(
    cfg: WorkerConfig, table: str, changes: Mapping[str, str | float | None]
) -> WorkerConfig:
    """``cfg`` with ``changes`` applied to ``[lane.<table>]`` (an emptied table goes)."""
    identity = msgspec.structs.replace(cfg.lane.get(table, LaneIdentity()), **changes)
    lanes = dict(cfg.lane)
    if identity == LaneIdentity():
        lanes.pop(table, None)
    else:
        lanes[table] = identity
    return cfg.replace(lane=lanes)


def fold_view(base: WorkerConfig, table: str | None, view: WorkerConfig) -> WorkerConfig:
    """``base`` (a whole config) holding the identity of a lane's ``view``: what a lane's
    live config starts from once registered, even when saving the credentials failed."""
    identity = {field: getattr(view, field) for field in IDENTITY_FIELDS}
    if table is None:
        return base.replace(**identity)
    return with_identity(base, table, identity)


def save_lane_config(
    path: Path, table: str | None, cfg: WorkerConfig, previous: WorkerConfig
) -> WorkerConfig:
    """Save what a lane changed (``previous`` -> ``cfg``, both its views). The first lane
    saves like any config; another lane writes only its changed identity fields into its
    table, on top of what the file holds now. Returns the file's new config. Raises
    ConfigError."""
    if table is None:
        save_config(path, cfg, previous=previous)
        return cfg
    changes = identity_changes(previous, cfg)
    base = current_config(path)
    if not changes:
        return base
    updated = with_identity(base, table, changes)
    save_config(path, updated, previous=base)
    return updated
