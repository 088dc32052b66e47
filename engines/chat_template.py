"""Render a model's own chat template (the GGUF's ``tokenizer.chat_template``, Jinja).

Using the model's own template is what makes it answer in its trained format and what
lets callers pass switches such as ``enable_thinking``. Templates are data from a
downloaded file, so they run in Jinja's immutable sandbox, with the helpers Hugging Face
templates expect (``raise_exception``, ``tojson``, ``strftime_now``, loop controls and
the ``{% generation %}`` tag).
Every failure, compile or render, is an ``EngineError`` prefixed ``chat template: ``.
Pure: no model, no I/O.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engines.errors import EngineError


class _GenerationTag(jinja2.ext.Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}`` marks assistant text for
    training masks; rendering passes its body through unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Hugging Face's override: Jinja's own tojson HTML-escapes and sorts keys.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


def merge_kwargs(
    model: Mapping[str, Any] | None, request: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The model's ``chatTemplateKwargs`` overlaid by the request's (request wins per key)."""
    return {**(model or {}), **(request or {})}


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    kwargs: Mapping[str, Any],
    *,
    bos_token: str,
    eos_token: str,
) -> str:
    """Render ``messages`` ending in the assistant turn (``add_generation_prompt``).

    ``kwargs`` are extra template variables; the standard ones (``messages``,
    ``add_generation_prompt``, ``bos_token``, ``eos_token``) win over a kwarg of the
    same name.
    """
    variables = {
        **kwargs,
        "messages": [dict(m) for m in messages],
        "add_generation_prompt": True,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    try:
        return _compile(template).render(variables)
    except Exception as exc:  # template code is untrusted data: any failure is its own
        raise EngineError(f"chat template: {exc}") from exc
