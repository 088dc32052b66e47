"""Loading one GGUF into llama.cpp, with llama.cpp's own error lines as the reason it failed.

The llama engine (``engines.llama``) decides when to load and what to keep; this module does
the load itself and the bookkeeping a loaded model carries (the file it came from, its
context, its vocabulary and chat template). llama.cpp's warnings and errors are routed to
stderr, a log stream, through a callback installed once per process, and the errors of the
current load (or probe) are kept, so a corrupt file, an unknown architecture or a GPU out of
memory fails the job with llama.cpp's words. It never generates and never chooses a model.
"""

from __future__ import annotations

import collections
import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jinja2
import llama_cpp

from engines.errors import EngineError

MAX_BATCH: Final = 512
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's own
# callback still maps the older numbering, so it drops load errors as "debug").
_GGML_LOG_WARN: Final = 3
_GGML_LOG_ERROR: Final = 4

# llama.cpp's error lines since the last ``load_errors.clear()``; filled by the callback.
load_errors: collections.deque[str] = collections.deque(maxlen=4)


def _on_llama_log(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's warnings and errors go to stderr (a log stream); errors are also kept
    for the message of a failed load."""
    del user_data
    if level not in (_GGML_LOG_WARN, _GGML_LOG_ERROR) or not text:
        return
    line = text.decode("utf-8", errors="replace").strip()
    if level == _GGML_LOG_ERROR:
        load_errors.append(line)
    print(line, file=sys.stderr, flush=True)


_LOG_CALLBACK: Final = llama_cpp.llama_log_callback(_on_llama_log)


def capture_native_logs() -> None:
    """Route llama.cpp's log lines through ``_on_llama_log`` (idempotent)."""
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


@dataclass(frozen=True)
class FileIdentity:
    """A model file as loaded: a later job reloads it when its size or mtime changed."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        try:
            st = path.stat()
        except OSError as exc:
            raise EngineError(f"cannot read model file {path}: {exc}") from exc
        return cls(path.resolve(), st.st_size, st.st_mtime_ns)


@dataclass
class LoadedModel:
    identity: FileIdentity
    n_ctx: int
    n_ctx_train: int
    llama: llama_cpp.Llama
    vocab: llama_cpp.llama_vocab_p
    chat_template: str | None
    adds_bos: bool
    bos_text: str
    eos_text: str


def load_model(identity: FileIdentity, n_ctx: int, n_train: int, threads: int) -> LoadedModel:
    """Load the file with every layer offloaded that the build can offload; ``EngineError``
    with llama.cpp's reason when it cannot."""
    path = identity.path
    load_errors.clear()
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
        reason = "; ".join(load_errors) or str(exc)
        raise EngineError(
            f"llama.cpp could not load {path.name}: {reason} (a corrupt or truncated "
            "file, an architecture this llama-cpp-python "
            f"{llama_cpp.__version__} does not know, or too little memory)"
        ) from exc
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    bos, eos = llama.token_bos(), llama.token_eos()
    template = llama.metadata.get("tokenizer.chat_template")
    return LoadedModel(
        identity=identity,
        n_ctx=n_ctx,
        n_ctx_train=n_train,
        llama=llama,
        vocab=vocab,
        chat_template=template or None,
        adds_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        bos_text=token_text(vocab, bos),
        eos_text=token_text(vocab, eos),
    )


def free_model(key: str, loaded: LoadedModel) -> None:
    """``WarmModels``' free: close the model, which releases its weights and context."""
    del key
    loaded.llama.close()


def token_text(vocab: llama_cpp.llama_vocab_p, token: int) -> str:
    if token < 0:
        return ""
    text: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
    return text.decode("utf-8", errors="replace")
