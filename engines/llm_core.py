"""Engine-independent LLM rules: context and token budget, BOS, stop strings, token bytes
to text, the ``<think>`` split and the ``chat.completion`` result (protocol.md §9.5).

Pure functions and two small stateful helpers (``StopHold``, ``TokenText``); no llama.cpp,
no I/O, so every rule is unit-tested without a model. The llama engine drives them.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any, Final, Literal

from engines.errors import EngineError
from protocol.tasks import LlmTask, ModelFile

DEFAULT_CONTEXT_SIZE: Final = 8192
THINK_OPEN: Final = "<think>"
THINK_CLOSE: Final = "</think>"

Finish = Literal["stop", "length"]


def overflow_message(prompt_tokens: int, n_ctx: int) -> str:
    return (
        f"prompt is {prompt_tokens} tokens but the context holds {n_ctx}; "
        "raise contextSize or shorten the prompt"
    )


def plan_budget(prompt_tokens: int, max_tokens: int, n_ctx: int) -> int:
    """Tokens this request may generate: ``max_tokens`` (at least 1) clamped to the room
    the prompt leaves. A prompt that leaves no room is refused, never truncated: cutting
    it would change what the caller asked."""
    room = n_ctx - prompt_tokens
    if room <= 0:
        raise EngineError(overflow_message(prompt_tokens, n_ctx))
    return min(max(max_tokens, 1), room)


def effective_context(configured: int | None, trained: int) -> int:
    """``contextSize`` (or the default; a non-positive value counts as unset), never
    beyond the model's training context; ``trained == 0`` means unknown."""
    wanted = configured if configured is not None and configured > 0 else DEFAULT_CONTEXT_SIZE
    return min(wanted, trained) if trained > 0 else wanted


def chat_messages(task: LlmTask) -> list[dict[str, str]]:
    """The template's ``messages``: the task's separate system prompt first, if any."""
    out = [{"role": "system", "content": task.system}] if task.system is not None else []
    out += [{"role": m.role, "content": m.content} for m in task.messages]
    return out


def should_add_bos(model_adds_bos: bool, prompt: str, bos_text: str) -> bool:
    """BOS only when the model asks for it and the rendered template has not already
    written it: a double BOS degrades output."""
    return model_adds_bos and (not bos_text or not prompt.startswith(bos_text))


def finish_for(generated: int, budget: int, hit_end: bool) -> Finish:
    """``length`` when generation used its whole budget without an end token or stop."""
    return "length" if not hit_end and generated >= budget else "stop"


def split_reasoning(text: str) -> tuple[str, str | None]:
    """(answer, reasoning): everything before the first ``</think>`` (minus a leading
    ``<think>``) is reasoning; both parts are trimmed. No ``</think>`` -> no reasoning."""
    thought, sep, answer = text.partition(THINK_CLOSE)
    if not sep:
        return text.strip(), None
    thought = thought.strip().removeprefix(THINK_OPEN).strip()
    return answer.strip(), thought


def completion_json(
    model: str,
    text: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish: Finish,
    elapsed_ms: int,
    *,
    structured: bool = False,
) -> dict[str, Any]:
    """The OpenAI-shaped ``chat.completion`` result with real token counts. A ``structured``
    answer (to a ``jsonSchema``) is the JSON that was validated, whole: a ``</think>`` inside
    one of its strings is no reasoning."""
    content, reasoning = (text.strip(), None) if structured else split_reasoning(text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "elapsed_ms": elapsed_ms,
    }


def pick_gguf(files: Sequence[ModelFile]) -> ModelFile | None:
    """The file a llama job loads: the ``model``-role ``.gguf`` (any case), else the first
    ``.gguf``, else None."""
    ggufs = [f for f in files if f.filename.lower().endswith(".gguf")]
    for f in ggufs:
        if f.role == "model":
            return f
    return ggufs[0] if ggufs else None


class StopHold:
    """Cuts generated text before the first stop string, across token pieces.

    ``push`` returns the text that is now safe to release: text that could still turn
    into a stop string is held back until it either does (and is cut) or cannot. Once a
    stop string matched, ``stopped`` is True and further pieces are ignored.
    """

    def __init__(self, stops: Sequence[str] | None) -> None:
        self._stops = [s for s in stops or () if s]
        self._text = ""
        self._released = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything generated so far, cut at the stop string if one matched."""
        return self._text

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        # A stop can only end inside the new piece, and can only start in the unreleased
        # tail (released text was checked not to begin any stop).
        search_from = self._released
        self._text += piece
        hits = [i for s in self._stops if (i := self._text.find(s, search_from)) >= 0]
        if hits:
            self._text = self._text[: min(hits)]
            self.stopped = True
            return self._release(len(self._text))
        return self._release(len(self._text) - self._held_suffix())

    def finish(self) -> str:
        """Generation ended: release whatever is still held."""
        return self._release(len(self._text))

    def _held_suffix(self) -> int:
        """Length of the longest unreleased suffix that is a proper prefix of a stop."""
        pending = self._text[self._released :]
        longest = max((len(s) for s in self._stops), default=0)
        for start in range(max(0, len(pending) - longest + 1), len(pending)):
            tail = pending[start:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self._stops):
                return len(tail)
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self._released)
        out = self._text[self._released : upto]
        self._released = upto
        return out


class TokenText:
    """Token bytes to text, across tokens that split a character.

    A multi-byte character waits in the decoder until its last byte arrives. One that never
    does (the token budget ran out, or the model ended, mid-character) is dropped by
    ``finish``, which says how many bytes that was: the text never ends in U+FFFD (as
    llama-cpp-python's own completion holds incomplete bytes back). Bytes that can never
    form a character still become U+FFFD where they are.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def finish(self) -> int:
        """Drop the bytes of an incomplete last character; how many there were (0 to 3)."""
        pending, _ = self._decoder.getstate()
        self._decoder.reset()
        return len(pending)
