"""What keeping the sd-cpp model warm buys over loading it for every job.

Not a test: it prints a table and two ratios, measured side by side in one run on the
generated random-weight SDXS checkpoint (``tests.models.tiny_sdxs``, 883 MB of f16), one
64x64 image per job by default (the cheapest job: where the load weighs the most).

(a) warm reuse: on a freshly started engine host (``EnginePool``, a real sd-cpp host
    subprocess, ZeroMQ, the image coming back as a binary frame), job 1 (load + sample +
    encode) against job 2 (sample + encode). Measured with the checkpoint evicted from the
    page cache first (``posix_fadvise(DONTNEED)``: the first job after boot, or after
    other models pushed it out) and with it cached. Target: job 2 / job 1 <= 0.3. The
    "floor" row is the library alone (load, job, job in one process, file cached): no
    worker's ratio with a cached file can beat it on this machine.
(b) per job: the worker's warm job against what the Rust worker did, a fresh process per
    job that loads the model, samples, writes the PNG and exits (its ``sd-cli``; here a
    Python process calling stable-diffusion-cpp-python, so the interpreter start and the
    import are in its time, shown on their own line), alternated round by round with a
    cached checkpoint. Target: worker / fresh process <= 0.5.

    .venv/bin/python bench/sdcpp_warm.py [--rounds 3] [--hosts 3] [--steps 1] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stable_diffusion_cpp

from bench.warm_common import Floor, evict
from engines.cpu_threads import engine_threads
from engines.provision import model_dir
from protocol import ipc
from protocol.tasks import ImageTask, ModelCliDefaults, ModelFile, ModelSource
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.job_outcome import JobSucceeded
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import parse_engines
from tests.support.models.tiny_sdxs import write_tiny_sdxs

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "bench/tiny-sdxs"
MODEL_FILE = "tiny-sdxs.gguf"
TARGET_WARM = 0.3
TARGET_FRESH = 0.5
# What a fresh per-job process does, the way engines.sdcpp loads and samples; with
# --twice it samples a second time on the loaded model and prints the three timings.
FRESH_JOB = textwrap.dedent(
    """
    import sys, time
    from stable_diffusion_cpp import StableDiffusion

    model, out, size, steps, seed, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    started = time.perf_counter()
    sd = StableDiffusion(
        model_path=model, diffusion_flash_attn=True, n_threads=threads, verbose=False
    )
    marks = [time.perf_counter()]
    for n in range(2 if "--twice" in sys.argv else 1):
        (image,) = sd.generate_image(
            prompt="an aurora fox", width=size, height=size, cfg_scale=1.0,
            sample_steps=steps, seed=seed + n,
        )
        marks.append(time.perf_counter())
    image.save(out, format="PNG")
    print(*(b - a for a, b in zip([started, *marks], marks)))
    """
)
STARTUP_ONLY = "import stable_diffusion_cpp"


@dataclass
class Bench:
    root: Path
    model: Path
    source: ModelSource
    size: int
    steps: int


@dataclass
class PoolRun:
    first_s: float
    second_s: float
    worker_s: list[float]
    fresh_s: list[float]
    startup_s: list[float]


def task(bench: Bench, seed: int) -> ImageTask:
    return ImageTask(
        prompt="an aurora fox", width=bench.size, height=bench.size, seed=seed, ext="png"
    )


async def run_job(pool: EnginePool, job_id: str, bench: Bench, seed: int) -> float:
    slot = pool.reserve(next(s.slot_id for s in pool.slots if s.engine == "sdcpp"), job_id)
    started = time.perf_counter()
    run = ipc.RunJob(job_id, MODEL_ID, task(bench, seed), bench.source, 600.0)
    outcome = await slot.execute(run, None)
    elapsed = time.perf_counter() - started
    if not isinstance(outcome, JobSucceeded):
        raise SystemExit(f"job {job_id} failed: {outcome!r}")
    assert outcome.payload is not None and bytes(outcome.payload.buffer[:4]) == b"\x89PNG"
    return elapsed


def fresh_process(bench: Bench, seed: int, out: Path, *, twice: bool = False) -> list[float]:
    """Wall time of the whole process, then its own load and sampling times."""
    argv = [sys.executable, "-c", FRESH_JOB, str(bench.model), str(out)]
    argv += [str(bench.size), str(bench.steps), str(seed), str(engine_threads())]
    argv += ["--twice"] if twice else []
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or not out.read_bytes().startswith(b"\x89PNG"):
        raise SystemExit(f"fresh process failed: {done.stderr.decode(errors='replace')}")
    return [elapsed, *map(float, done.stdout.split())]


def interpreter_start() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", STARTUP_ONLY], cwd=REPO_ROOT, check=True)
    return time.perf_counter() - started


async def with_pool(bench: Bench, *, cold: bool, rounds: int, tmp: Path) -> PoolRun:
    pool = EnginePool(
        parse_engines("sdcpp", with_synthetic=False), PoolSettings(models_root=bench.root)
    )
    run = PoolRun(0.0, 0.0, [], [], [])
    async with anyio.create_task_group() as tg:
        await tg.start(pool.serve)
        if not await pool.wait_ready(120):
            raise SystemExit("the sdcpp engine host did not become ready")
        if cold:
            evict(bench.model)
        run.first_s = await run_job(pool, "first", bench, seed=1)
        run.second_s = await run_job(pool, "second", bench, seed=2)
        for i in range(rounds):
            run.worker_s.append(await run_job(pool, f"round-{i}", bench, seed=10 + i))
            out = tmp / f"fresh-{i}.png"
            fresh = await anyio.to_thread.run_sync(fresh_process, bench, 10 + i, out)
            run.fresh_s.append(fresh[0])
            run.startup_s.append(await anyio.to_thread.run_sync(interpreter_start))
        await pool.drain(30)
        tg.cancel_scope.cancel()
    return run


def prepare(root: Path, size: int, steps: int) -> Bench:
    # Hard-linked where provisioning looks, so the (unused) URL is never fetched.
    model = write_tiny_sdxs(model_dir(root, MODEL_ID, "sdcpp") / MODEL_FILE)
    file = ModelFile("model", f"http://127.0.0.1:9/{MODEL_FILE}", MODEL_FILE)
    source = ModelSource("sd-cpp", [file], ModelCliDefaults(1.0, steps, size, size))
    return Bench(root, model, source, size, steps)


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="(b) rounds, alternated")
    parser.add_argument("--hosts", type=int, default=3, help="(a) fresh hosts per variant")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sdcpp-") as tmp:
        bench = prepare(Path(tmp) / "models", args.size, args.steps)

        def pool_run(cold: bool, rounds: int = 0) -> PoolRun:
            return anyio.run(lambda: with_pool(bench, cold=cold, rounds=rounds, tmp=Path(tmp)))

        cold = [pool_run(True) for _ in range(args.hosts)]
        warm = [pool_run(False) for _ in range(args.hosts - 1)]
        warm.append(pool_run(False, args.rounds))
        # The floor for the cached rows: the library's own job 2 / job 1, in one process.
        _, load_s, first_s, second_s = fresh_process(bench, 1, Path(tmp) / "d.png", twice=True)
    report(args, cold, warm, Floor(load_s, first_s, second_s))


def report(
    args: argparse.Namespace, cold: list[PoolRun], warm: list[PoolRun], floor: Floor
) -> None:
    ms = 1000.0
    print(
        f"model: generated SDXS checkpoint, 883 MB f16; {args.size}x{args.size}, "
        f"{args.steps} step(s), png; stable-diffusion-cpp-python "
        f"{stable_diffusion_cpp.__version__}; {os.cpu_count()} CPUs, "
        f"{engine_threads()} threads"
    )
    print()
    head = f"(a) job on a fresh host, median of {len(cold)}"
    print(f"{head:52} {'job 1 ms':>9} {'job 2 ms':>9} {'saved':>7} {'2 / 1':>6}")
    ratios: list[float] = []
    for name, runs in (
        ("checkpoint evicted from the page cache", cold),
        ("checkpoint cached", warm),
    ):
        first = median([r.first_s for r in runs])
        second = median([r.second_s for r in runs])
        ratio = median([r.second_s / r.first_s for r in runs])
        ratios.append(ratio)
        saved = (first - second) * ms
        print(f"  {name:50} {first * ms:9.1f} {second * ms:9.1f} {saved:7.1f} {ratio:6.3f}")
        pairs = ", ".join(f"{r.first_s * ms:.0f}/{r.second_s * ms:.0f}" for r in runs)
        print(f"    each host (job 1 / job 2 ms): {pairs}")
    floor.report()
    print()
    last = warm[-1]
    w, f, s = median(last.worker_s), median(last.fresh_s), median(last.startup_s)
    head = f"(b) per job, median of {args.rounds} alternated rounds"
    print(f"{head:52} {'ms':>9}")
    print(f"  {'through the worker (warm host)':50} {w * ms:9.1f}")
    print(f"  {'fresh process per job (load, sample, write, exit)':50} {f * ms:9.1f}")
    print(f"  {'  of which interpreter start + import':50} {s * ms:9.1f}")
    print(f"    worker rounds ms: {', '.join(f'{x * ms:.0f}' for x in last.worker_s)}")
    print(f"    fresh rounds ms:  {', '.join(f'{x * ms:.0f}' for x in last.fresh_s)}")
    print()

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    cold_ratio, warm_ratio = ratios
    fresh_ratio = w / f
    native_ratio = w / (f - s)
    print(
        f"(a) second job / first job: {cold_ratio:.3f} (evicted), {warm_ratio:.3f} (cached)"
        f"  target <= {TARGET_WARM}: {verdict(cold_ratio <= TARGET_WARM)} (evicted), "
        f"{verdict(warm_ratio <= TARGET_WARM)} (cached)"
    )
    print(
        f"(b) worker / fresh process per job: {fresh_ratio:.3f}  target <= {TARGET_FRESH}: "
        f"{verdict(fresh_ratio <= TARGET_FRESH)}  (without the interpreter start and import: "
        f"{native_ratio:.3f})"
    )


if __name__ == "__main__":
    main()
