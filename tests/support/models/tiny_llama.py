"""A tiny random-weight llama GGUF that llama.cpp loads and runs in milliseconds.

The vocabulary is a small SentencePiece-style ("llama") one: the usual control tokens, the
256 byte-fallback tokens (so any text tokenises), every printable ASCII character and a
handful of whole words (``true``, ``false``, ``user`` ...), which is enough for
grammar-constrained JSON. Weights are seeded noise: output is gibberish, but greedy
decoding is deterministic. Files are cached under ``<repo>/.test-cache/`` keyed by every
parameter, so a test session pays for generation once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Final

import gguf
import numpy as np

CHATML_TEMPLATE: Final = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

BOS: Final = "<s>"
EOS: Final = "</s>"
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"

N_EMBD: Final = 64
N_HEAD: Final = 4
N_LAYER: Final = 2
N_FF: Final = 128
_FORMAT_VERSION: Final = 2  # bump when the generated file changes shape
_WORDS: Final = (
    "true", "false", "null", "ok", "yes", "no", "user", "assistant", "system",
    "hello", "the", "answer", "red", "green", "blue",
)  # fmt: skip

CACHE_DIR: Final = Path(__file__).resolve().parents[3] / ".test-cache"


@dataclass(frozen=True)
class Dims:
    """The transformer's shape. ``f16`` stores the 2-D weights as float16 (half the file,
    and the type real models use); the default model is all float32."""

    n_embd: int = N_EMBD
    n_head: int = N_HEAD
    n_layer: int = N_LAYER
    n_ff: int = N_FF
    f16: bool = False


TINY: Final = Dims()


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = ["<unk>", BOS, EOS, IM_START, IM_END]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: list[str] = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    # Every prefix of every word (bare and with the SentencePiece space mark), so the
    # bigram merger can build whole words out of characters.
    for word in _WORDS:
        for variant in (word, "\u2581" + word):
            pieces += [variant[:i] for i in range(2, len(variant) + 1)]
    seen: set[str] = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    # SentencePiece merges the highest-scoring pair first: prefer longer pieces.
    scores = [
        float(len(t)) if ty == gguf.TokenType.NORMAL else 0.0
        for t, ty in zip(tokens, types, strict=True)
    ]
    return tokens, scores, [int(t) for t in types]


def _cache_key(
    chat_template: str | None, n_ctx_train: int, seed: int, add_bos: bool, dims: Dims
) -> str:
    fields: list[object] = [_FORMAT_VERSION, chat_template, n_ctx_train, seed, add_bos]
    if dims != TINY:  # the default model keeps the key it always had
        fields.append(list(astuple(dims)))
    spec = json.dumps(fields)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def write_tiny_llama(
    path: Path,
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    n_ctx_train: int = 512,
    seed: int = 0,
    add_bos: bool = True,
    dims: Dims = TINY,
) -> Path:
    """Write the model to ``path`` (a copy of the cached file) and return ``path``.

    ``chat_template=None`` writes a model without ``tokenizer.chat_template``; ``dims``
    makes a bigger (or differently shaped) model, e.g. for benchmarks.
    """
    cached = cached_tiny_llama(
        chat_template=chat_template, n_ctx_train=n_ctx_train, seed=seed, add_bos=add_bos, dims=dims
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cached.read_bytes())
    return path


def cached_tiny_llama(
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    n_ctx_train: int = 512,
    seed: int = 0,
    add_bos: bool = True,
    dims: Dims = TINY,
) -> Path:
    """The cached model for these parameters, generating it on first use."""
    key = _cache_key(chat_template, n_ctx_train, seed, add_bos, dims)
    target = CACHE_DIR / f"tiny-llama-{key}.gguf"
    if target.is_file():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a parallel run never sees half a file.
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        _generate(partial, chat_template, n_ctx_train, seed, add_bos, dims)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _generate(
    path: Path,
    chat_template: str | None,
    n_ctx_train: int,
    seed: int,
    add_bos: bool,
    dims: Dims = TINY,
) -> None:
    tokens, scores, types = _vocabulary()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    n_embd, n_ff = dims.n_embd, dims.n_ff
    matrix_type = np.float16 if dims.f16 else np.float32

    def weights(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(matrix_type)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(dims.n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(dims.n_head)
    writer.add_head_count_kv(dims.n_head)
    writer.add_rope_dimension_count(n_embd // dims.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dims.f16 else gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_eot_token_id(tokens.index(IM_END))
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    writer.add_tensor("token_embd.weight", weights(n_vocab, n_embd, scale=1.0))
    for i in range(dims.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weights(n_vocab, n_embd, scale=1.0))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
