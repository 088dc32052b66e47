"""The llama engine: chat completions from GGUF models through llama-cpp-python (§9.5).

One job: fetch the offer's files (``engines.provision``, llama layout), pick the GGUF,
keep it loaded across jobs (reloaded only when the file or the context size changes),
render the model's own chat template, refuse a prompt that leaves no room to answer,
then generate token by token with progress as the liveness signal, honouring stop
strings, cancellation and ``jsonSchema`` (a grammar built from the schema constrains
sampling, so the answer parses and validates). The rules themselves live in
``engines.llm_core`` and ``engines.chat_template``; this module is the llama.cpp driver.

Every failure is an ``EngineError`` (retryable) except a non-llm task, which is
``UnsupportedTask``. llama.cpp's own error lines are captured while a model loads, so a
corrupt or truncated file fails the job with llama.cpp's reason instead of a bare
"failed to load".
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jinja2
import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from engines.base import Engine, JobContext, JsonResult
from engines.chat_template import merge_kwargs, render_chat
from engines.cpu_threads import engine_threads
from engines.errors import EngineError, UnsupportedTask
from engines.gguf_meta import GgufFormatError, training_context
from engines.llm_core import (
    Finish,
    StopHold,
    chat_messages,
    completion_json,
    effective_context,
    finish_for,
    pick_gguf,
    plan_budget,
    should_add_bos,
)
from engines.progress_throttle import PROGRESS_INTERVAL_S, ProgressThrottle
from engines.provision import LLM_SUBDIR, ensure_model_files
from protocol.tasks import LlmTask, ModelSource, TaskKindName, task_kind

WILDCARD_MODEL: Final = "llama-cpp:*"
DEFAULT_SEED: Final = 1234
MAX_BATCH: Final = 512
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's own
# callback still maps the older numbering, so it drops load errors as "debug").
_GGML_LOG_WARN: Final = 3
_GGML_LOG_ERROR: Final = 4
_SEED_MODULUS: Final = 0xFFFFFFFF  # u32 seeds, but llama.cpp reads 0xFFFFFFFF as "random"

# llama.cpp's error lines from the current load; filled by the log callback below.
_load_errors: collections.deque[str] = collections.deque(maxlen=4)


def _on_llama_log(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's warnings and errors go to stderr (a log stream); errors are also kept
    for the message of a failed load."""
    del user_data
    if level not in (_GGML_LOG_WARN, _GGML_LOG_ERROR) or not text:
        return
    line = text.decode("utf-8", errors="replace").strip()
    if level == _GGML_LOG_ERROR:
        _load_errors.append(line)
    print(line, file=sys.stderr, flush=True)


_LOG_CALLBACK: Final = llama_cpp.llama_log_callback(_on_llama_log)


@dataclass(frozen=True)
class _FileIdentity:
    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileIdentity:
        try:
            st = path.stat()
        except OSError as exc:
            raise EngineError(f"cannot read model file {path}: {exc}") from exc
        return cls(path.resolve(), st.st_size, st.st_mtime_ns)


@dataclass
class _LoadedModel:
    identity: _FileIdentity
    n_ctx: int
    n_ctx_train: int
    llama: llama_cpp.Llama
    vocab: llama_cpp.llama_vocab_p
    chat_template: str | None
    adds_bos: bool
    bos_text: str
    eos_text: str


class LlamaEngine(Engine):
    name = "llama"

    def __init__(self, models_root: Path, threads: int | None = None) -> None:
        super().__init__()
        self.models_root = models_root
        self._llm_dir = models_root / LLM_SUBDIR
        self._loaded: _LoadedModel | None = None
        self.threads = threads if threads is not None else engine_threads()
        # Token reports are paced (the last always sent); 0 reports every token.
        self.progress_interval_s = PROGRESS_INTERVAL_S
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))

    # --- Engine interface -----------------------------------------------------------------

    def advertised_models(self) -> dict[TaskKindName, list[str]]:
        return {"llm": [*self._local_models(), WILDCARD_MODEL]}

    def library_versions(self) -> dict[str, str]:
        return {"llama-cpp-python": llama_cpp.__version__}

    def run(self, ctx: JobContext) -> JsonResult:
        task = ctx.task
        if not isinstance(task, LlmTask):
            raise UnsupportedTask(self.name, task_kind(task))
        path = self._model_file(ctx)
        loaded = self._ensure_loaded(ctx, path)
        started = time.monotonic()
        tokens = self._prompt_tokens(loaded, task, ctx.model_source)
        budget = plan_budget(len(tokens), task.max_tokens, loaded.n_ctx)
        text, generated, finish = self._generate(
            ctx, loaded, task, tokens, budget, self.progress_interval_s
        )
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return JsonResult(
            completion_json(ctx.model, text, len(tokens), generated, finish, elapsed_ms)
        )

    def close(self) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.llama.close()

    # --- model files ----------------------------------------------------------------------

    def _local_models(self) -> dict[str, Path]:
        """``<models_root>/llm/*.gguf`` (any case) by stem, sorted."""
        try:
            entries = sorted(self._llm_dir.iterdir())
        except OSError:
            return {}
        return {p.stem: p for p in entries if p.suffix.lower() == ".gguf" and p.is_file()}

    def _model_file(self, ctx: JobContext) -> Path:
        source = ctx.model_source
        if not source.files:
            for stem, path in self._local_models().items():
                if ctx.model in (stem, path.name):
                    return path
            raise EngineError(
                f"model `{ctx.model}` not found in {self._llm_dir} and the offer's "
                "modelSource listed no files to download"
            )
        chosen = pick_gguf(source.files)
        if chosen is None:
            raise EngineError(f"llama modelSource for `{ctx.model}` contained no .gguf file")

        def on_progress(filename: str, done: int, total: int) -> None:
            ctx.progress("downloading", done, total, filename)

        paths = ensure_model_files(
            source,
            ctx.model,
            self.models_root,
            layout="llama",
            on_progress=on_progress,
            cancel=ctx.cancelled,
        )
        same_role = [f for f in source.files if f.role == chosen.role]
        index = next(i for i, f in enumerate(same_role) if f is chosen)
        return paths[chosen.role][index]

    # --- loading --------------------------------------------------------------------------

    def _ensure_loaded(self, ctx: JobContext, path: Path) -> _LoadedModel:
        identity = _FileIdentity.of(path)
        loaded = self._loaded
        if loaded is not None and loaded.identity == identity:
            n_train = loaded.n_ctx_train
        else:
            try:
                n_train = training_context(path)
            except (GgufFormatError, OSError) as exc:
                raise EngineError(f"{path.name} is not a usable GGUF model: {exc}") from exc
        n_ctx = effective_context(ctx.model_source.cli_defaults.context_size, n_train)
        if loaded is not None and loaded.identity == identity and loaded.n_ctx == n_ctx:
            return loaded
        self.close()  # free the old model before the new one takes its memory
        ctx.progress("loading", 0, 1, path.name)
        started = time.monotonic()
        loaded = self._load(identity, n_ctx, n_train, self.threads)
        self.model_loads += 1
        self._loaded = loaded
        ctx.progress("loading", 1, 1, path.name)
        ctx.log(
            "info",
            f"loaded {path.name} n_ctx={n_ctx} n_ctx_train={loaded.n_ctx_train} "
            f"threads={self.threads} elapsed_ms={int((time.monotonic() - started) * 1000)}",
        )
        return loaded

    @staticmethod
    def _load(identity: _FileIdentity, n_ctx: int, n_train: int, threads: int) -> _LoadedModel:
        path = identity.path
        _load_errors.clear()
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(MAX_BATCH, n_ctx),
                n_gpu_layers=-1,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except jinja2.TemplateError as exc:
            # llama-cpp-python compiles the GGUF's template while loading.
            raise EngineError(f"chat template: {exc}") from exc
        except Exception as exc:
            reason = "; ".join(_load_errors) or str(exc)
            raise EngineError(
                f"llama.cpp could not load {path.name}: {reason} (a corrupt or truncated "
                "file, an architecture this llama-cpp-python "
                f"{llama_cpp.__version__} does not know, or too little memory)"
            ) from exc
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        bos, eos = llama.token_bos(), llama.token_eos()
        template = llama.metadata.get("tokenizer.chat_template")
        return _LoadedModel(
            identity=identity,
            n_ctx=n_ctx,
            n_ctx_train=n_train,
            llama=llama,
            vocab=vocab,
            chat_template=template or None,
            adds_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            bos_text=_token_text(vocab, bos),
            eos_text=_token_text(vocab, eos),
        )

    # --- prompt and generation ------------------------------------------------------------

    @staticmethod
    def _prompt_tokens(loaded: _LoadedModel, task: LlmTask, source: ModelSource) -> list[int]:
        if loaded.chat_template is None:
            raise EngineError("model has no chat template (tokenizer.chat_template)")
        prompt = render_chat(
            loaded.chat_template,
            chat_messages(task),
            merge_kwargs(source.cli_defaults.chat_template_kwargs, task.chat_template_kwargs),
            bos_token=loaded.bos_text,
            eos_token=loaded.eos_text,
        )
        add_bos = should_add_bos(loaded.adds_bos, prompt, loaded.bos_text)
        tokens = loaded.llama.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        if not tokens:
            raise EngineError("the rendered chat prompt is empty")
        return tokens

    @staticmethod
    def _generate(
        ctx: JobContext,
        loaded: _LoadedModel,
        task: LlmTask,
        tokens: list[int],
        budget: int,
        interval_s: float,
    ) -> tuple[str, int, Finish]:
        """(text, completion tokens, finish reason); raises ``EngineError("cancelled")``."""
        llama = loaded.llama
        grammar = _grammar(task.json_schema, loaded.vocab) if task.json_schema is not None else None
        greedy = task.temperature <= 0
        llama.set_seed(_seed(task.seed))
        # No KV-prefix reuse across jobs: the same prompt always gets the same greedy answer.
        llama.reset()  # type: ignore[no-untyped-call]
        hold = StopHold(task.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
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
                hold.push(decoder.decode(_piece(loaded.vocab, token)))
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
        hold.push(decoder.decode(b"", final=True))
        hold.finish()
        return hold.text, generated, finish_for(generated, budget, hit_end)


def _grammar(schema: Any, vocab: llama_cpp.llama_vocab_p) -> LlamaGrammar:
    """A grammar that only admits JSON valid against ``schema``, checked by llama.cpp
    before use (a grammar it rejects would otherwise crash the sampler)."""
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise EngineError(f"jsonSchema cannot be turned into a grammar: {exc}") from exc
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise EngineError("jsonSchema produced a grammar that llama.cpp rejects")
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def _seed(seed: int | None) -> int:
    return DEFAULT_SEED if seed is None else seed % _SEED_MODULUS


def _token_text(vocab: llama_cpp.llama_vocab_p, token: int) -> str:
    if token < 0:
        return ""
    text: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
    return text.decode("utf-8", errors="replace")


def _piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    """The bytes a generated token renders as (control tokens render as nothing)."""
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n  # llama.cpp returns minus the size it needs


ENGINE_CLASS = LlamaEngine
