"""The direct side of ``llama_warm.py``: llama-cpp-python in a process of its own.

Every call comes from this process's main thread. In one process that also runs an event
loop and calls the library from worker threads, llama.cpp's OpenMP thread teams (one per
calling thread) slowed generation by 20-60 % on 2 cores, which would flatter the worker.

Protocol: argv ``<model> <n_ctx> <threads>``; prints ``{"load_s": ...}`` once loaded, then
answers each stdin line ``{"prompt": str, "n": int}`` with ``{"count": int, "s": float}``
(greedy tokens made, up to ``n``, and the seconds they took). EOF ends it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import llama_cpp

# The engine's sampler chain for a greedy job (engines.llama._generate).
GREEDY: dict[str, Any] = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "temp": 0.0,
    "repeat_penalty": 1.0,
}


def chatml(text: str) -> bytes:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n".encode()


class Direct:
    """The model driven the way the engine drives it."""

    def __init__(self, path: str, n_ctx: int, threads: int) -> None:
        self.llama = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=min(512, n_ctx),
            n_gpu_layers=-1,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)

    def generate(self, text: str, n: int) -> int:
        """Greedy tokens until ``n`` or an end-of-generation token; returns the count."""
        tokens = self.llama.tokenize(chatml(text), add_bos=True, special=True)
        self.llama.set_seed(1234)
        self.llama.reset()  # type: ignore[no-untyped-call]
        count = 0
        stream = self.llama.generate(tokens, reset=True, **GREEDY)
        try:
            for token in stream:
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    break
                count += 1
                if count >= n:
                    break
        finally:
            stream.close()
        return count


def main() -> None:
    path, n_ctx, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    started = time.perf_counter()
    direct = Direct(path, n_ctx, threads)
    print(json.dumps({"load_s": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        started = time.perf_counter()
        count = direct.generate(ask["prompt"], ask["n"])
        print(json.dumps({"count": count, "s": time.perf_counter() - started}), flush=True)
    direct.llama.close()


if __name__ == "__main__":
    main()
