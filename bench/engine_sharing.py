"""What sharing the cores between engine hosts buys when their jobs overlap.

Not a test: it prints a table and two ratios, measured side by side in one run. One pool
with an llama and an sdcpp slot (real engine hosts, the generated models of
``llama_warm.py`` and ``sdcpp_warm.py``) runs an llama job while the sdcpp slot makes
images back to back, so the two always compute at the same time. Twice per round,
alternated: with the pool's default (the cores shared equally, ``engines.cpu_threads``)
and with every host on all the cores, which is what each library would do if every host
took the whole machine. The libraries' threads spin while they wait for each other, so
oversubscribed cores cost far more than a fair split.

Ratios: tokens/s and images/s with the cores shared / with every host on all the cores
(above 1: sharing is faster). There is no target; the bench shows why the split exists.

    .venv/bin/python bench/engine_sharing.py [--rounds 2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import llama_warm, sdcpp_warm
from engines.cpu_threads import available_cores
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import parse_engines
from tests.support.models.tiny_llama import Dims


@dataclass
class Overlap:
    tokens_per_s: float
    images_per_s: float


async def overlapped(
    llm: llama_warm.Bench, sd: sdcpp_warm.Bench, tokens: int, threads: int | None
) -> Overlap:
    settings = PoolSettings(models_root=llm.root, cpu_threads=threads)
    pool = EnginePool(parse_engines("llama,sdcpp", with_synthetic=False), settings)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.serve)
        if not await pool.wait_ready(120):
            raise SystemExit("the engine hosts did not become ready")
        # Load both models first: the overlap is about generation, not loading.
        await llama_warm.run_job(pool, "warm-llm", llama_warm.chat("hello", 1), llm.source)
        await sdcpp_warm.run_job(pool, "warm-sd", sd, seed=1)
        llm_done = anyio.Event()
        images: list[float] = []

        async def image_loop() -> None:
            n = 0
            while not llm_done.is_set():
                n += 1
                images.append(await sdcpp_warm.run_job(pool, f"sd-{n}", sd, seed=n))

        async with anyio.create_task_group() as jobs:
            jobs.start_soon(image_loop)
            started = time.perf_counter()
            task = llama_warm.chat("hello", tokens)
            llm_s = await llama_warm.run_job(pool, "llm", task, llm.source)
            llm_done.set()
        elapsed = time.perf_counter() - started
        await pool.drain(30)
        tg.cancel_scope.cancel()
    return Overlap(tokens / llm_s, len(images) / max(elapsed, sum(images)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="the llama job's length")
    args = parser.parse_args()
    cores = available_cores()
    shared: list[Overlap] = []
    whole: list[Overlap] = []
    with tempfile.TemporaryDirectory(prefix="bench-sharing-") as tmp:
        root = Path(tmp)
        dims = Dims(n_embd=1024, n_head=16, n_layer=8, n_ff=2816, f16=True)
        llm = llama_warm.prepare(root, dims)
        sd = sdcpp_warm.prepare(root, 64, 1)
        for _ in range(args.rounds):
            shared.append(anyio.run(overlapped, llm, sd, args.tokens, None))
            whole.append(anyio.run(overlapped, llm, sd, args.tokens, cores))

    print(f"an llama job ({args.tokens} tokens) overlapping 64x64 sdcpp images; {cores} cores")
    print(f"{'':44} {'tokens/s':>9} {'images/s':>9}")
    rows = (("cores shared (the default)", shared), ("every host on all the cores", whole))
    for name, runs in rows:
        tps = statistics.median(r.tokens_per_s for r in runs)
        ips = statistics.median(r.images_per_s for r in runs)
        print(f"  {name:42} {tps:9.1f} {ips:9.2f}")
    pairs = list(zip(shared, whole, strict=True))
    tps_ratio = statistics.median(s.tokens_per_s / w.tokens_per_s for s, w in pairs)
    ips_ratio = statistics.median(s.images_per_s / w.images_per_s for s, w in pairs)
    print(f"shared / all cores: tokens/s {tps_ratio:.1f}x, images/s {ips_ratio:.1f}x")
    if cores == 1:
        print("(one core: both variants are the same)")


if __name__ == "__main__":
    main()
