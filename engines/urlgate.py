"""The download URL gate (protocol.md §9.4, Rust ``src/net.rs``).

Only ``https`` is fetched, plus plain ``http`` to this machine (``localhost``, 127.0.0.0/8,
``[::1]``) for tests and local mirrors: a plain-http model or input is one MITM away from a
poisoned model. The gate is pure: it parses and decides, it never resolves or connects.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from engines.errors import ProvisionError

LOOPBACK_NAMES = frozenset({"localhost"})


def check_url(url: str, what: str) -> None:
    """Refuse ``url`` unless it is https or loopback http; ``what`` names the artefact class.

    Raises ``ProvisionError`` with ``invalid <what> URL "<raw>"`` when it does not parse as an
    absolute URL, and ``<what> URL must use https (loopback http is allowed for
    tests/mirrors): <url>`` for any other scheme or a non-loopback http host.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        raise ProvisionError(f'invalid {what} URL "{url}"') from None
    scheme = parts.scheme
    if not scheme or (scheme in ("http", "https") and not host):
        raise ProvisionError(f'invalid {what} URL "{url}"')
    if scheme == "https":
        return
    if scheme == "http" and host is not None and is_loopback_host(host):
        return
    raise ProvisionError(
        f"{what} URL must use https (loopback http is allowed for tests/mirrors): {url}"
    )


def is_loopback_host(host: str) -> bool:
    """``localhost``, an IPv4 address in 127.0.0.0/8, or ``::1`` (``host`` without brackets)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address in ipaddress.IPv4Network("127.0.0.0/8")
    return address == ipaddress.IPv6Address("::1")
