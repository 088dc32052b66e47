"""What leaves for Sentry, cleaned: pure functions over the event's plain data.

Every string of an event or breadcrumb is scrubbed: known secrets (the auth token, the
registration secret, the DSN and its key, the local API token, the page's action secret)
and the texts of recent jobs (prompts, messages, input URLs) become placeholders,
credentials and query strings inside URLs and ``Bearer`` values are cut, and values under
secret-looking keys (``Authorization``, ``*token*``, ``*secret*``, ``*password*``, ``dsn``,
``cookie``) are replaced whole. The scrubber works on values, not on the names the code gave
them, because a secret can arrive anywhere: a formatted log message, an exception's text, an
engine's stderr line. The SDK's own bookkeeping (ids, timestamps, level, release) is left
alone: a one-letter prompt must not turn ``error`` into ``[prompt]rror``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

REDACTED: Final = "[redacted]"
PROMPT: Final = "[prompt]"

# Shorter texts are too common to hunt for inside other strings (a prompt "a cat" would blank
# every "a cat" in a traceback): they are replaced only where they are a whole value.
MIN_PROMPT_FRAGMENT: Final = 12
MIN_SECRET_CHARS: Final = 6

# The SDK's fields, never scrubbed: what Sentry needs to accept, group and order an event.
STRUCTURAL_KEYS: Final = frozenset(
    {
        "event_id",
        "timestamp",
        "start_timestamp",
        "level",
        "platform",
        "sdk",
        "release",
        "environment",
        "trace_id",
        "span_id",
        "parent_span_id",
        "type",
        "category",
        "fingerprint",
    }
)

_SECRET_KEY: Final = re.compile(
    r"authorization|cookie|token|secret|password|passwd|dsn|api[-_]?key|credential", re.I
)
_URL_CREDENTIALS: Final = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I
)
_URL_QUERY: Final = re.compile(r"(?P<url>[a-z][a-z0-9+.-]*://[^\s?#]+)\?[^\s#\"']*", re.I)
_BEARER: Final = re.compile(r"(?P<word>bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.I)


def prompt_fragments(prompt: str) -> list[str]:
    """What of a text is hunted inside other strings: the whole text and each of its lines,
    when long enough to be recognised alone (an engine may echo one line of a prompt)."""
    parts = {prompt.strip()} | {line.strip() for line in prompt.splitlines()}
    return [p for p in parts if len(p) >= MIN_PROMPT_FRAGMENT]


def whole_values(prompt: str) -> set[str]:
    """Strings that are replaced when they are a value on their own, however short."""
    return {p for p in {prompt.strip()} | {line.strip() for line in prompt.splitlines()} if p}


class _Snapshot:
    """One event's view of the secrets and texts, compiled once for all its strings."""

    def __init__(self, secrets: Iterable[str], prompts: Iterable[str]) -> None:
        self.kinds: dict[str, str] = {}
        self.whole: set[str] = set()
        for prompt in prompts:
            self.whole |= whole_values(prompt)
            for fragment in prompt_fragments(prompt):
                self.kinds[fragment] = PROMPT
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS:
                self.kinds[secret] = REDACTED  # a secret inside a prompt is still a secret
        ordered = sorted(self.kinds, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, value: str) -> str:
        if value.strip() in self.whole:
            return PROMPT
        if self.pattern is not None:
            value = self.pattern.sub(lambda m: self.kinds[m.group(0)], value)
        value = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", value)
        value = _URL_QUERY.sub(lambda m: f"{m['url']}?{REDACTED}", value)
        return _BEARER.sub(lambda m: f"{m['word']} {REDACTED}", value)


class Scrubber:
    def __init__(
        self, secrets: Callable[[], Iterable[str]], prompts: Callable[[], Iterable[str]]
    ) -> None:
        self._secrets = secrets
        self._prompts = prompts
        self._cache: tuple[tuple[frozenset[str], tuple[str, ...]], _Snapshot] | None = None

    def _snapshot(self) -> _Snapshot:
        key = (frozenset(self._secrets()), tuple(self._prompts()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, _Snapshot(*key))
        return self._cache[1]

    def text(self, value: str) -> str:
        return self._snapshot().text(value)

    def value(self, value: Any) -> Any:
        """``value`` (an event, a breadcrumb) with every string scrubbed, recursively."""
        return _walk(self._snapshot(), value, None)


def _walk(snap: _Snapshot, value: Any, key: str | None) -> Any:
    if key is not None and key in STRUCTURAL_KEYS:
        return value
    if key is not None and _SECRET_KEY.search(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return snap.text(value)
    if isinstance(value, dict):
        return {k: _walk(snap, v, k if isinstance(k, str) else None) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(snap, v, None) for v in value]
    return value
