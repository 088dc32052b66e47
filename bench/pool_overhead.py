"""What the process boundary costs: a synthetic job through the pool vs. the same engine in-process.

Not a test: it prints a table and ratios measured side by side in one run.

* Latency: a cheap synthetic LLM job (the engine's own time is a few tens of microseconds,
  so the overhead shows) run N times through ``EnginePool`` (ZeroMQ over ipc://, a real
  engine host subprocess) and N times by calling ``SyntheticEngine.run`` in this process.
  The added latency at p50/p99 is the difference of the two distributions' percentiles.
* Throughput: an 8 MiB binary result (``synthetic-blob-8m``, cached inside the engine so
  only the transfer is timed) through the pool, against ``bytes(...)`` of 8 MiB in memory.

Targets (design): <= 0.5 ms added at p50, <= 2 ms at p99, >= 1 GiB/s for results.

    .venv/bin/python bench/pool_overhead.py [--jobs 2000] [--blobs 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.base import JobContext
from engines.synthetic import BLOB_BYTES, BLOB_MODEL, SyntheticEngine
from protocol import ipc
from protocol.tasks import ChatMessage, ImageTask, LlmTask, ModelCliDefaults, ModelSource, Task
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.job_outcome import JobSucceeded
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import parse_engines

SOURCE = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
LLM = LlmTask(messages=[ChatMessage("user", "how much does a process boundary cost?")])
BLOB = ImageTask(prompt="eight mebibytes")
GIB = 2**30
TARGET_P50_MS = 0.5
TARGET_P99_MS = 2.0
TARGET_GIB_S = 1.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def in_process(task: Task, model: str, n: int) -> list[float]:
    engine = SyntheticEngine()
    with tempfile.TemporaryDirectory() as root:

        def one() -> object:
            ctx = JobContext("bench", model, task, SOURCE, Path(root))
            return engine.run(ctx)

        time_calls(one, min(n, 50))  # warm up
        return time_calls(one, n)


async def through_pool(n_jobs: int, n_blobs: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as root:
        pool = EnginePool(parse_engines("synthetic"), PoolSettings(models_root=Path(root)))
        async with anyio.create_task_group() as tg:
            await tg.start(pool.serve)
            if not await pool.wait_ready(30):
                raise SystemExit("the engine host did not become ready")

            async def run(job: str, model: str, task: Task, n: int) -> list[float]:
                out = []
                for i in range(n):
                    t0 = time.perf_counter()
                    slot = pool.reserve(pool.slots[0].slot_id, f"{job}-{i}")
                    outcome = await slot.execute(
                        ipc.RunJob(f"{job}-{i}", model, task, SOURCE, 60), None
                    )
                    out.append(time.perf_counter() - t0)
                    assert isinstance(outcome, JobSucceeded), outcome
                    if model == BLOB_MODEL:
                        assert outcome.payload is not None and len(outcome.payload) == BLOB_BYTES
                return out

            await run("warm", "synthetic", LLM, 200)
            llm = await run("llm", "synthetic", LLM, n_jobs)
            await run("warm-blob", BLOB_MODEL, BLOB, 5)
            blob = await run("blob", BLOB_MODEL, BLOB, n_blobs)
            await pool.drain(10)
            tg.cancel_scope.cancel()
    return llm, blob


def memory_copy(n: int) -> list[float]:
    source = memoryview(b"\xa5" * BLOB_BYTES)
    time_calls(lambda: bytes(source), 5)
    return time_calls(lambda: bytes(source), n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--blobs", type=int, default=60)
    args = parser.parse_args()

    local_llm = in_process(LLM, "synthetic", args.jobs)
    local_blob = in_process(BLOB, BLOB_MODEL, args.blobs)
    pool_llm, pool_blob = anyio.run(through_pool, args.jobs, args.blobs)
    copies = memory_copy(args.blobs)
    report(local_llm, pool_llm, local_blob, pool_blob, copies)


def report(
    local_llm: list[float],
    pool_llm: list[float],
    local_blob: list[float],
    pool_blob: list[float],
    copies: list[float],
) -> None:
    ms = 1000.0
    rows = [
        ("llm job, in-process", local_llm),
        ("llm job, through pool", pool_llm),
        ("8 MiB result, in-process", local_blob),
        ("8 MiB result, through pool", pool_blob),
        ("bytes() copy of 8 MiB", copies),
    ]
    print(f"{'':30} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, samples in rows:
        p50, p99 = percentile(samples, 50) * ms, percentile(samples, 99) * ms
        mean = statistics.fmean(samples) * ms
        print(f"{name:30} {len(samples):6d} {p50:9.3f} {p99:9.3f} {mean:9.3f}")

    added_p50 = (percentile(pool_llm, 50) - percentile(local_llm, 50)) * ms
    added_p99 = (percentile(pool_llm, 99) - percentile(local_llm, 99)) * ms
    # Whole job through the pool, fixed per-job overhead included: the conservative figure.
    ipc_gib_s = BLOB_BYTES / percentile(pool_blob, 50) / GIB
    transfer_s = percentile(pool_blob, 50) - percentile(pool_llm, 50)
    net_gib_s = BLOB_BYTES / transfer_s / GIB if transfer_s > 0 else float("inf")
    copy_gib_s = BLOB_BYTES / percentile(copies, 50) / GIB

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print()
    print(
        f"added latency p50: {added_p50:7.3f} ms  (target <= {TARGET_P50_MS} ms) "
        f"{verdict(added_p50 <= TARGET_P50_MS)}"
    )
    print(
        f"added latency p99: {added_p99:7.3f} ms  (target <= {TARGET_P99_MS} ms) "
        f"{verdict(added_p99 <= TARGET_P99_MS)}"
    )
    slower = percentile(pool_llm, 50) / percentile(local_llm, 50)
    print(f"pool / in-process, llm job p50: {slower:6.1f}x")
    print(
        f"8 MiB result through pool: {ipc_gib_s:6.2f} GiB/s whole job, {net_gib_s:6.2f} GiB/s "
        f"net of the per-job overhead (target >= {TARGET_GIB_S} GiB/s) "
        f"{verdict(ipc_gib_s >= TARGET_GIB_S)}"
    )
    print(
        f"bytes() copy of 8 MiB:     {copy_gib_s:6.2f} GiB/s; "
        f"pool / memory copy: {ipc_gib_s / copy_gib_s:5.2f}x"
    )


if __name__ == "__main__":
    main()
