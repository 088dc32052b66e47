"""The llama engine's generation: the token loop, and the ``jsonSchema`` contract around it.

``generate`` samples one answer token by token under the job's settings (and a grammar, if
any), reporting progress (paced), honouring stop strings and cancellation, and turning token
bytes into text without a broken last character (``TokenText``; the dropped bytes are
logged). ``answer`` is what a job returns: with a schema contract, the first answer that
validates, from the job's seed or one retry with another (``attempt_seeds``, logged), else
``InvalidOutput``. It never loads or chooses a model (``engines.llama`` does).
"""

from __future__ import annotations

import ctypes
from typing import Final

import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar

from engines.base import JobContext
from engines.errors import EngineError, InvalidOutput, SchemaRefused
from engines.llama_model import LoadedModel, load_errors
from engines.llm_core import Finish, StopHold, TokenText, finish_for
from engines.progress_throttle import ProgressThrottle
from engines.schema_contract import SchemaContract
from protocol.tasks import LlmTask

DEFAULT_SEED: Final = 1234
_SEED_MODULUS: Final = 0xFFFFFFFF  # u32 seeds, but llama.cpp reads 0xFFFFFFFF as "random"


def answer(
    ctx: JobContext,
    loaded: LoadedModel,
    task: LlmTask,
    tokens: list[int],
    budget: int,
    contract: SchemaContract | None,
    interval_s: float,
) -> tuple[str, int, Finish]:
    """The answer to return: with a ``contract``, one that satisfies it, from the job's
    seed or the one retry (``attempt_seeds``); ``InvalidOutput`` when neither does."""
    grammar = load_grammar(contract.gbnf, loaded.vocab) if contract is not None else None
    seeds = attempt_seeds(task.seed, task.temperature)
    problem = ""
    for attempt, seed in enumerate(seeds, 1):
        text, generated, finish = generate(
            ctx, loaded, task, tokens, budget, seed, grammar, interval_s
        )
        if contract is None:
            return text, generated, finish
        problem = contract.violation(text) or ""
        if not problem:
            return text, generated, finish
        if finish == "length":
            problem += f"; the answer was cut at the token budget of {budget} tokens"
        if attempt < len(seeds):
            ctx.log(
                "warn",
                f"answer does not satisfy jsonSchema: {problem}; generating again with "
                f"seed {seeds[attempt]} instead of {seed}",
            )
    if len(seeds) == 1:
        ctx.log(
            "warn",
            f"answer does not satisfy jsonSchema: {problem}; not generated again: "
            "temperature 0 gives the same answer for every seed",
        )
    raise InvalidOutput(problem)


def generate(
    ctx: JobContext,
    loaded: LoadedModel,
    task: LlmTask,
    tokens: list[int],
    budget: int,
    seed: int,
    grammar: LlamaGrammar | None,
    interval_s: float,
) -> tuple[str, int, Finish]:
    """(text, completion tokens, finish reason); raises ``EngineError("cancelled")``."""
    llama = loaded.llama
    greedy = task.temperature <= 0
    llama.set_seed(seed)
    # No KV-prefix reuse across jobs: the same prompt always gets the same greedy answer.
    llama.reset()  # type: ignore[no-untyped-call]
    hold = StopHold(task.stop)
    decoder = TokenText()
    generated, hit_end = 0, False
    if ctx.cancelled.is_set():
        raise EngineError("cancelled")
    throttle = ProgressThrottle(
        lambda done, total: ctx.progress("generating", done, total, ""), interval_s
    )
    throttle.update(0, budget)
    stream = llama.generate(
        tokens,
        top_k=0,  # off: the sampler chain is [top-p] -> temperature -> seeded draw
        top_p=1.0 if task.top_p is None else task.top_p,
        min_p=0.0,
        typical_p=1.0,
        temp=0.0 if greedy else task.temperature,
        repeat_penalty=1.0,
        reset=True,
        grammar=grammar,
    )
    try:
        for token in stream:
            if ctx.cancelled.is_set():
                raise EngineError("cancelled")
            if llama_cpp.llama_vocab_is_eog(loaded.vocab, token):
                hit_end = True
                break
            generated += 1
            hold.push(decoder.push(_piece(loaded.vocab, token)))
            throttle.update(generated, budget)
            if hold.stopped:
                hit_end = True
                break
            if generated >= budget:
                break
    except RuntimeError as exc:  # llama_decode failed: KV cache, device memory ...
        raise EngineError(f"llama.cpp generation failed: {exc}") from exc
    finally:
        stream.close()
    throttle.finish(generated, budget)
    dropped = decoder.finish()
    if dropped and not hold.stopped:
        ctx.log(
            "warn",
            f"dropped {dropped} byte(s) of an incomplete UTF-8 character at the end of the "
            f"answer ({'token budget' if generated >= budget else 'end of generation'})",
        )
    hold.finish()
    return hold.text, generated, finish_for(generated, budget, hit_end)


def load_grammar(gbnf: str, vocab: llama_cpp.llama_vocab_p) -> LlamaGrammar:
    """The schema's grammar, checked by llama.cpp before use (a grammar it rejects would
    otherwise crash the sampler)."""
    load_errors.clear()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        why = "; ".join(load_errors) or "no reason given"
        raise SchemaRefused(
            "jsonSchema", "#", f"llama.cpp rejects the grammar built from it: {why}"
        )
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def attempt_seeds(seed: int | None, temperature: float) -> list[int]:
    """The seeds a schema answer is generated with, in turn, until one validates:

    - the job's own seed (``DEFAULT_SEED`` when it names none) first;
    - then one other (the next seed), unless decoding is greedy (temperature 0), where every
      seed gives the same answer and a second try would only repeat it.
    """
    first = _seed(seed)
    return [first] if temperature <= 0 else [first, (first + 1) % _SEED_MODULUS]


def _seed(seed: int | None) -> int:
    return DEFAULT_SEED if seed is None else seed % _SEED_MODULUS


def _piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    """The bytes a generated token renders as (control tokens render as nothing)."""
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n  # llama.cpp returns minus the size it needs
