"""The local studio: a small, real implementation of the studio side of the protocol.

Same URLs, frames and rules as the studio a worker normally talks to (registration with
operator approval, one WebSocket session per worker, offers with compare-and-set
claims, multipart uploads, retries by attempts), backed by SQLite and files under one
data dir, plus a JSON API of its own under ``/local`` to submit jobs and approve workers.
It is how CI tests the worker end to end and how an operator tries or self-hosts one.
The supervisor never imports this package.

Modules: ``server`` (LocalStudio, serve), ``client`` (sync and async API clients),
``dispatcher`` (offers and outcomes), ``connection`` (the WebSocket driver), ``session``,
``selection`` and ``jobs`` (pure rules), ``store`` (one SQLite connection shared by
``job_queue``, ``worker_registry`` and ``log_archive``), ``records`` (row types) and
``schema``, ``worker_api`` and ``local_api`` (HTTP routes), ``api_types`` and ``views``
(local API wire types), ``assets``, ``auth``, ``errors``.
"""

from __future__ import annotations

from localstudio.server import LocalStudio, StudioSettings, serve

__all__ = ["LocalStudio", "StudioSettings", "serve"]
