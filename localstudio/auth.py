"""Secrets, tokens and identifiers for the local studio.

Only hashes are ever stored: registration secrets and worker tokens are kept as the
lowercase hex sha256 of their UTF-8 bytes (what the worker itself sends as
``registrationSecretHash``), and every comparison runs in constant time. No I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Final

TOKEN_BYTES: Final = 32
ID_BYTES: Final = 8
_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(raw: str) -> str:
    """The lowercase hex sha256 of ``raw`` encoded as UTF-8."""
    return hashlib.sha256(raw.encode()).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True for exactly 64 lowercase hex characters (the §6.2 ``registrationSecretHash``)."""
    return _SHA256_HEX.fullmatch(value) is not None


def secret_matches(raw: str, stored_hash: str | None) -> bool:
    """Whether ``raw`` hashes to ``stored_hash``, compared in constant time.

    A missing stored hash (a worker approved but never polled) matches nothing.
    """
    if stored_hash is None:
        return False
    return hmac.compare_digest(sha256_hex(raw), stored_hash)


def admin_token_matches(presented: str | None, expected: str | None) -> bool:
    """The local API guard: no expected token lets everyone in; else constant-time equal."""
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def mint_token() -> str:
    """A fresh worker auth token: 256 bits from the OS CSPRNG as 64 hex characters."""
    return secrets.token_hex(TOKEN_BYTES)


def new_id(prefix: str) -> str:
    """A random identifier such as ``w-3f9a...``, ``rr-...`` or ``job-...``."""
    return f"{prefix}-{secrets.token_hex(ID_BYTES)}"


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when absent."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
