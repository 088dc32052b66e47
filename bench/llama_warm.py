"""What keeping the llama model warm buys, and what the process boundary costs per token.

Not a test: it prints a table and two ratios, measured side by side in one run on a
generated random-weight llama GGUF (``tests.models.tiny_llama`` with bigger dims, float16,
~200 MB by default), greedy decoding, a fixed number of tokens (the prompt is chosen so
the model does not stop early, and every job is checked to have generated exactly that).

(a) warm reuse: on a freshly started engine host (``EnginePool``, a real llama host
    subprocess, ZeroMQ), job 1 (load + generate) against job 2 (generate only), both the
    same short job. Measured twice: with the model file evicted from the page cache first
    (``posix_fadvise(DONTNEED)``: the first job after boot, or after other models pushed
    it out) and with the file already cached (llama.cpp mmaps the weights, so on a CPU
    build a cached "load" is nearly free). Target: job 2 / job 1 <= 0.3. The ratio is
    roughly job / (load + job), so it depends on the job's length (``--short-tokens``);
    the "saved" column, the load a warm host skips, is the figure that carries over. The
    "floor" row is the library alone (load, job, job in one process, file cached): no
    worker's ratio with a cached file can beat it on this machine.
(b) throughput: tokens/s of a long greedy job through the worker (whole job, wall clock
    at the pool: IPC, paced progress messages, result JSON) against tokens/s calling
    llama-cpp-python directly (``bench/llama_direct.py``, a quiet process of its own, its
    generation timed inside it) with the same model, context, threads, batch and sampler
    settings, alternated round by round. Target: worker / direct >= 0.97.

    .venv/bin/python bench/llama_warm.py [--tokens 256] [--rounds 3] [--hosts 3]
        [--short-tokens 16] [--n-embd 1024] [--n-layer 8] [--n-ff 2816]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp

from bench.warm_common import Floor, evict
from engines.cpu_threads import engine_threads
from engines.llm_core import effective_context
from protocol import ipc
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelFile, ModelSource
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.job_outcome import JobSucceeded
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import parse_engines
from tests.support.models.tiny_llama import Dims, cached_tiny_llama

MODEL_FILE = "bench-llama.gguf"
N_CTX = 2048
SHORT_TOKENS = 16  # (a)'s job; --short-tokens changes it
TARGET_WARM = 0.3
TARGET_TPS = 0.97
PROMPTS = (
    "hello",
    "tell me the answer",
    "red green blue",
    "yes or no",
    "the system says ok",
    "assistant, hello",
)


@dataclass
class Bench:
    root: Path
    model: Path
    source: ModelSource
    n_ctx: int


def chat(text: str, max_tokens: int) -> LlmTask:
    return LlmTask(messages=[ChatMessage("user", text)], max_tokens=max_tokens, temperature=0.0)


# --- direct llama-cpp-python -------------------------------------------------------------------


class Direct:
    """``bench/llama_direct.py``: the model in a quiet process of its own, main thread only."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        argv = [sys.executable, str(Path(__file__).with_name("llama_direct.py")), str(path)]
        argv += [str(n_ctx), str(engine_threads())]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.load_s = float(self._read()["load_s"])

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the direct process exited ({self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def generate(self, text: str, n: int) -> tuple[int, float]:
        """(greedy tokens made, up to ``n``; seconds they took)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"prompt": text, "n": n}).encode() + b"\n")
        self.process.stdin.flush()
        answer = self._read()
        return int(answer["count"]), float(answer["s"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def timed(direct: Direct, prompt: str, n: int) -> float:
    made, seconds = direct.generate(prompt, n)
    assert made == n, made
    return seconds


def pick_prompt(direct: Direct, n: int) -> str:
    for text in PROMPTS:
        if direct.generate(text, n)[0] == n:
            return text
    raise SystemExit(f"every prompt made the model stop before {n} tokens; try other dims")


# --- through the worker ----------------------------------------------------------------------


async def run_job(pool: EnginePool, job_id: str, task: LlmTask, source: ModelSource) -> float:
    slot = pool.reserve(next(s.slot_id for s in pool.slots if s.engine == "llama"), job_id)
    started = time.perf_counter()
    outcome = await slot.execute(ipc.RunJob(job_id, "bench", task, source, 600.0), None)
    elapsed = time.perf_counter() - started
    if not isinstance(outcome, JobSucceeded):
        raise SystemExit(f"job {job_id} failed: {outcome!r}")
    assert outcome.json is not None
    usage = outcome.json["usage"]
    if usage["completion_tokens"] != task.max_tokens:
        raise SystemExit(f"job {job_id} generated {usage['completion_tokens']} tokens")
    return elapsed


@dataclass
class PoolRun:
    first_s: float
    second_s: float
    worker_s: list[float]
    direct_s: list[float]


async def with_pool(
    bench: Bench,
    prompt: str,
    *,
    cold: bool,
    short_tokens: int,
    tokens: int,
    rounds: int,
    direct: Direct | None,
) -> PoolRun:
    pool = EnginePool(
        parse_engines("llama", with_synthetic=False), PoolSettings(models_root=bench.root)
    )
    worker_s: list[float] = []
    direct_s: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(pool.serve)
        if not await pool.wait_ready(120):
            raise SystemExit("the llama engine host did not become ready")
        if cold:
            evict(bench.model)
        short = chat(prompt, short_tokens)
        first = await run_job(pool, "first", short, bench.source)
        second = await run_job(pool, "second", short, bench.source)
        if direct is not None:
            long_task = chat(prompt, tokens)
            for i in range(rounds):
                worker_s.append(await run_job(pool, f"long-{i}", long_task, bench.source))
                made, seconds = await anyio.to_thread.run_sync(direct.generate, prompt, tokens)
                assert made == tokens, made
                direct_s.append(seconds)
        await pool.drain(30)
        tg.cancel_scope.cancel()
    return PoolRun(first, second, worker_s, direct_s)


# --- main ------------------------------------------------------------------------------------


def prepare(root: Path, dims: Dims) -> Bench:
    cached = cached_tiny_llama(n_ctx_train=N_CTX, dims=dims)
    dest = root / "llm" / MODEL_FILE
    dest.parent.mkdir(parents=True)
    try:
        dest.hardlink_to(cached)
    except OSError:
        dest.write_bytes(cached.read_bytes())
    size = dest.stat().st_size
    # Present at the llama layout's path, so provisioning never fetches the (unused) URL.
    file = ModelFile("model", f"http://127.0.0.1:9/{MODEL_FILE}", MODEL_FILE, approx_bytes=size)
    defaults = ModelCliDefaults(1.0, 8, 512, 512, context_size=N_CTX)
    source = ModelSource("llama-cpp", [file], defaults)
    return Bench(root, dest, source, effective_context(N_CTX, N_CTX))


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="(b) tokens per job")
    parser.add_argument("--short-tokens", type=int, default=SHORT_TOKENS, help="(a) job")
    parser.add_argument("--rounds", type=int, default=3, help="(b) rounds, alternated")
    parser.add_argument("--hosts", type=int, default=3, help="(a) fresh hosts per variant")
    parser.add_argument("--n-embd", type=int, default=1024)
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--n-ff", type=int, default=2816)
    args = parser.parse_args()
    dims = Dims(n_embd=args.n_embd, n_head=16, n_layer=args.n_layer, n_ff=args.n_ff, f16=True)

    def pool_run(bench: Bench, prompt: str, cold: bool, direct: Direct | None = None) -> PoolRun:
        tokens, rounds = (args.tokens, args.rounds) if direct is not None else (0, 0)
        return anyio.run(
            lambda: with_pool(
                bench,
                prompt,
                cold=cold,
                short_tokens=args.short_tokens,
                tokens=tokens,
                rounds=rounds,
                direct=direct,
            )
        )

    with tempfile.TemporaryDirectory(prefix="bench-llama-") as tmp:
        bench = prepare(Path(tmp), dims)
        size_mb = bench.model.stat().st_size / 1e6
        # Cold runs first: nothing in this process maps the file yet, so eviction works.
        cold = [pool_run(bench, PROMPTS[0], True) for _ in range(args.hosts)]
        direct = Direct(bench.model, bench.n_ctx)
        try:
            # Before anything else runs on it: the floor's first job is the first after load.
            short = (timed(direct, PROMPTS[0], args.short_tokens) for _ in range(2))
            floor = Floor(direct.load_s, *short)
            prompt = pick_prompt(direct, args.tokens)
            warm = [pool_run(bench, prompt, False) for _ in range(args.hosts - 1)]
            warm.append(pool_run(bench, prompt, False, direct))
        finally:
            direct.close()

    report(args, dims, size_mb, prompt, cold, warm, floor)


def report(
    args: argparse.Namespace,
    dims: Dims,
    size_mb: float,
    prompt: str,
    cold: list[PoolRun],
    warm: list[PoolRun],
    floor: Floor,
) -> None:
    ms = 1000.0
    print(
        f"model: llama n_embd={dims.n_embd} n_layer={dims.n_layer} n_ff={dims.n_ff} f16, "
        f"{size_mb:.0f} MB, n_ctx={N_CTX}; prompt {prompt!r}; greedy; "
        f"llama-cpp-python {llama_cpp.__version__}; {os.cpu_count()} CPUs, "
        f"{engine_threads()} threads"
    )
    print()
    head = f"(a) {args.short_tokens}-token job on a fresh host, median of {len(cold)}"
    print(f"{head:52} {'job 1 ms':>9} {'job 2 ms':>9} {'saved':>7} {'2 / 1':>6}")
    ratios: dict[str, float] = {}
    for name, runs in (
        ("model file evicted from the page cache", cold),
        ("model file cached", warm),
    ):
        first = median([r.first_s for r in runs])
        second = median([r.second_s for r in runs])
        ratios[name] = median([r.second_s / r.first_s for r in runs])
        saved = (first - second) * ms
        print(f"  {name:50} {first * ms:9.1f} {second * ms:9.1f} {saved:7.1f} {ratios[name]:6.3f}")
        pairs = ", ".join(f"{r.first_s * ms:.0f}/{r.second_s * ms:.0f}" for r in runs)
        print(f"    each host (job 1 / job 2 ms): {pairs}")
    floor.report()
    print()
    last = warm[-1]
    w, d = median(last.worker_s), median(last.direct_s)
    head = f"(b) {args.tokens} tokens, median of {args.rounds} alternated rounds"
    print(f"{head:52} {'ms':>9} {'tok/s':>9}")
    print(f"  {'through the worker (pool + engine host)':50} {w * ms:9.1f} {args.tokens / w:9.1f}")
    print(f"  {'llama-cpp-python directly, own process':50} {d * ms:9.1f} {args.tokens / d:9.1f}")
    print(f"    worker rounds ms: {', '.join(f'{s * ms:.0f}' for s in last.worker_s)}")
    print(f"    direct rounds ms: {', '.join(f'{s * ms:.0f}' for s in last.direct_s)}")
    print()

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    cold_ratio, warm_ratio = ratios.values()
    tps_ratio = d / w
    print(
        f"(a) second job / first job: {cold_ratio:.3f} (evicted), {warm_ratio:.3f} (cached)"
        f"  target <= {TARGET_WARM}: {verdict(cold_ratio <= TARGET_WARM)} (evicted), "
        f"{verdict(warm_ratio <= TARGET_WARM)} (cached)"
    )
    print(
        f"(b) tokens/s worker / direct: {tps_ratio:.3f}  target >= {TARGET_TPS}: "
        f"{verdict(tps_ratio >= TARGET_TPS)}"
    )


if __name__ == "__main__":
    main()
