"""The sd-cpp engine on the real library and a generated random-weight SDXS checkpoint.

Model files are served from a real HTTP server on 127.0.0.1; the 883 MB checkpoint is
hard-linked into the job's models_root cache layout beforehand, so provisioning finds it
present and never asks the server for it (the tests check that). Tests marked ``slow``
load the model (~0.7 s) and sample 64x64 images (~0.5 s a step) on the CPU build.
"""

from __future__ import annotations

import io
import math
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from PIL import Image

from engines.base import BinaryResult, JobContext
from engines.cpu_threads import THREADS_ENV, available_cores
from engines.errors import EngineError, ProvisionError, UnsupportedTask
from engines.loader import create_engine
from engines.provision import model_dir
from engines.sdcpp import SdCppEngine
from protocol.ipc import LogLevelName, ProgressPhase
from protocol.tasks import (
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelFile,
    ModelSource,
    Task,
)
from tests.support.file_server import FileServer, Route, serve_files
from tests.support.models.tiny_sdxs import (
    CORRUPT_TENSOR,
    REPO_ROOT,
    cached_tiny_sdxs,
    load_manifest,
    write_corrupt_sdxs,
    write_tiny_sdxs,
)

MODEL_ID = "tiny/sdxs:test"
MODEL_FILE = "tiny-sdxs.gguf"
SUBPROCESS_TIMEOUT_S = 90


@dataclass
class Recorder:
    progress: list[tuple[ProgressPhase, int, int, str]] = field(default_factory=list)
    logs: list[tuple[LogLevelName, str]] = field(default_factory=list)
    on_progress: Callable[[ProgressPhase, int, int], None] | None = None

    def report(self, phase: ProgressPhase, step: int, total: int, message: str) -> None:
        self.progress.append((phase, step, total, message))
        if self.on_progress is not None:
            self.on_progress(phase, step, total)

    def log(self, level: LogLevelName, message: str) -> None:
        self.logs.append((level, message))

    def phase(self, phase: ProgressPhase) -> list[tuple[int, int, str]]:
        return [(s, t, m) for p, s, t, m in self.progress if p == phase]


@dataclass
class Setup:
    root: Path
    server: FileServer
    engines: list[SdCppEngine] = field(default_factory=list)

    def engine(self) -> SdCppEngine:
        engine = SdCppEngine(self.root)
        self.engines.append(engine)
        return engine

    def place_model(self, model: str = MODEL_ID, corrupt: bool = False) -> Path:
        """Hard-link the cached checkpoint where provisioning looks for ``model``'s file."""
        dest = model_dir(self.root, model, "sdcpp") / MODEL_FILE
        return write_corrupt_sdxs(dest) if corrupt else write_tiny_sdxs(dest)

    def source(self, *extra: ModelFile, **defaults: object) -> ModelSource:
        cli = {"cfg_scale": 1.0, "steps": 1, "width": 64, "height": 64, **defaults}
        files = [ModelFile("model", self.server.url(f"/models/{MODEL_FILE}"), MODEL_FILE)]
        return ModelSource("sd-cpp", [*files, *extra], ModelCliDefaults(**cli))  # type: ignore[arg-type]

    def job(
        self,
        task: Task,
        source: ModelSource | None = None,
        model: str = MODEL_ID,
        recorder: Recorder | None = None,
    ) -> tuple[JobContext, Recorder]:
        rec = recorder or Recorder()
        ctx = JobContext(
            job_id="job-1",
            model=model,
            task=task,
            model_source=source or self.source(),
            models_root=self.root,
            progress=rec.report,
            log=rec.log,
        )
        return ctx, rec


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return cached_tiny_sdxs()  # generated once (~7 s), then cached across runs


@pytest.fixture
def setup(tmp_path: Path, tiny_model: Path) -> Iterator[Setup]:
    with serve_files() as server:
        made = Setup(tmp_path / "models", server)
        yield made
        for engine in made.engines:
            engine.close()


def image_task(**fields: object) -> ImageTask:
    values: dict[str, object] = {"prompt": "an aurora fox", "width": 64, "height": 64, "seed": 7}
    return ImageTask(**(values | fields))  # type: ignore[arg-type]


def newest_model(engine: SdCppEngine) -> Any:
    """The library's model object of the most recently used load."""
    loaded = engine._warm.peek(engine.resident()[-1].load_key)
    assert loaded is not None
    return loaded.model


def decode(result: object) -> Image.Image:
    assert isinstance(result, BinaryResult)
    image = Image.open(io.BytesIO(result.data))
    image.load()
    return image


def jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# --- the generated model -------------------------------------------------------------------


@pytest.mark.slow
def test_generated_model_follows_the_manifest_and_the_recipe(tiny_model: Path) -> None:
    manifest = load_manifest()
    reader = gguf.GGUFReader(tiny_model)
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == list(manifest)
    for name, shape in manifest.items():
        assert tensors[name].data.shape == tuple(shape), name
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F16, name
    norm = tensors["cond_stage_model.transformer.text_model.final_layer_norm.weight"].data
    bias = tensors["cond_stage_model.transformer.text_model.final_layer_norm.bias"].data
    assert (norm == 1).all() and (bias == 0).all()
    weight = tensors["model.diffusion_model.input_blocks.0.0.weight"].data.astype(np.float32)
    assert math.isclose(weight.std(), 1 / math.sqrt(4 * 3 * 3), rel_tol=0.05)

    corrupt = {t.name: t for t in gguf.GGUFReader(cached_tiny_sdxs(corrupt=True)).tensors}
    assert [n for n in manifest if corrupt[n].data.shape != tuple(manifest[n])] == [CORRUPT_TENSOR]
    assert corrupt[CORRUPT_TENSOR].data.shape == tuple(reversed(manifest[CORRUPT_TENSOR]))


# --- jobs that never load the model -----------------------------------------------------------


def test_loader_builds_the_engine(tmp_path: Path) -> None:
    import stable_diffusion_cpp

    engine = create_engine("sdcpp", tmp_path)
    try:
        assert isinstance(engine, SdCppEngine)
        assert engine.name == "sdcpp"
        assert engine.advertised_models() == {"image": ["sd-cpp:*"]}
        assert engine.library_versions() == {
            "stable-diffusion-cpp-python": stable_diffusion_cpp.__version__
        }
        assert engine.model_loads == 0
    finally:
        engine.close()


def test_non_image_task_is_unsupported(setup: Setup) -> None:
    ctx, _ = setup.job(LlmTask(messages=[ChatMessage("user", "hi")]))
    with pytest.raises(UnsupportedTask) as err:
        setup.engine().run(ctx)
    assert str(err.value) == "sdcpp engine cannot serve llm tasks"
    assert not err.value.retryable
    assert setup.server.requests() == []


def test_source_without_a_model_file_fails_before_downloading(setup: Setup) -> None:
    vae = ModelFile("vae", setup.server.add("/vae.safetensors", Route(b"vae")), "vae.safetensors")
    source = ModelSource("sd-cpp", [vae], ModelCliDefaults(1.0, 1, 64, 64))
    ctx, _ = setup.job(image_task(), source)
    with pytest.raises(EngineError, match=r"^modelSource has no diffusion-model / model file$"):
        setup.engine().run(ctx)
    assert setup.server.requests() == []


def test_init_image_that_404s_fails_the_job(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    ctx, rec = setup.job(image_task(init_image_url=setup.server.url("/missing.webp")))
    with pytest.raises(ProvisionError, match="404"):
        engine.run(ctx)
    # No text-to-image fallback: nothing was loaded or sampled.
    assert engine.model_loads == 0
    assert rec.phase("generating") == []


def test_init_image_that_does_not_decode_fails_the_job(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    url = setup.server.add("/broken.jpg", Route(b"\xff\xd8\xff\xe0" + b"\0" * 64))
    ctx, _ = setup.job(image_task(init_image_url=url))
    with pytest.raises(ProvisionError, match="cannot be decoded"):
        engine.run(ctx)
    assert engine.model_loads == 0


def test_a_job_cancelled_before_it_starts_does_nothing(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    ctx, rec = setup.job(image_task())
    ctx.cancelled.set()
    with pytest.raises(EngineError, match=r"^cancelled$"):
        engine.run(ctx)
    assert engine.model_loads == 0
    assert rec.progress == []


# --- jobs on the real model --------------------------------------------------------------------


@pytest.mark.slow
def test_text_to_image_in_the_asked_format_and_size(
    setup: Setup, capfd: pytest.CaptureFixture[str]
) -> None:
    setup.place_model()
    engine = setup.engine()

    webp_ctx, webp_rec = setup.job(image_task(ext="webp"))
    webp = engine.run(webp_ctx)
    assert isinstance(webp, BinaryResult) and webp.ext == "webp"
    assert (decode(webp).format, decode(webp).size) == ("WEBP", (64, 64))
    assert webp_rec.phase("loading") == [(0, 1, MODEL_FILE), (1, 1, MODEL_FILE)]

    png_ctx, png_rec = setup.job(image_task(ext="png"))
    png = engine.run(png_ctx)
    assert isinstance(png, BinaryResult) and png.ext == "png"
    assert (decode(png).format, decode(png).size) == ("PNG", (64, 64))
    assert decode(png).tobytes() == decode(webp).convert("RGB").tobytes()  # webp is lossless

    # The second job reused the loaded model, and the cached file was never fetched.
    assert engine.model_loads == 1
    assert png_rec.phase("loading") == []
    assert setup.server.requests() == []
    # stdout is a log stream of the host: the library and its wrapper print nothing there.
    assert capfd.readouterr().out == ""


@pytest.mark.slow
def test_an_unknown_sampler_fails_the_job_with_the_library_reason(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    ctx, rec = setup.job(image_task(sampling_method="warp-drive"))
    with pytest.raises(EngineError, match=r"image generation failed: .*warp-drive") as err:
        engine.run(ctx)
    assert err.value.retryable
    assert rec.phase("generating") == []
    assert decode(engine.run(setup.job(image_task())[0])).size == (64, 64)
    assert engine.model_loads == 1


@pytest.mark.slow
def test_a_size_the_model_cannot_sample_is_resized_to_the_asked_one(setup: Setup) -> None:
    setup.place_model()
    ctx, rec = setup.job(image_task(width=100, height=72, ext="png"))
    assert decode(setup.engine().run(ctx)).size == (100, 72)
    assert any(level == "warn" and "100x72" in msg for level, msg in rec.logs)


@pytest.mark.slow
def test_same_seed_same_bytes(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    first = engine.run(setup.job(image_task(seed=11))[0])
    again = engine.run(setup.job(image_task(seed=11))[0])
    other = engine.run(setup.job(image_task(seed=12))[0])
    assert isinstance(first, BinaryResult) and isinstance(again, BinaryResult)
    assert isinstance(other, BinaryResult)
    assert first.data == again.data
    assert other.data != first.data


def test_the_library_gets_the_available_cores_or_the_override(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wrapper's own default is half the CPUs, which idles half of a machine without SMT.
    monkeypatch.delenv(THREADS_ENV, raising=False)
    setup.place_model()
    assert setup.engine().threads == available_cores()
    monkeypatch.setenv(THREADS_ENV, "1")
    engine = setup.engine()
    ctx, rec = setup.job(image_task())
    engine.run(ctx)
    assert newest_model(engine).n_threads == 1
    assert any("threads=1" in message for _, message in rec.logs)


@pytest.mark.slow
def test_progress_arrives_once_per_sampling_step(setup: Setup) -> None:
    setup.place_model()
    ctx, rec = setup.job(image_task(steps=3))
    setup.engine().run(ctx)
    assert rec.phase("generating") == [(1, 3, ""), (2, 3, ""), (3, 3, "")]
    phases = [p for p, *_ in rec.progress]
    assert phases == ["loading", "loading", "generating", "generating", "generating"]


@pytest.mark.slow
def test_other_files_or_load_options_reload_the_model(setup: Setup) -> None:
    setup.place_model("model-a")
    setup.place_model("model-b")
    engine = setup.engine()
    engine.run(setup.job(image_task(), model="model-a")[0])
    engine.run(setup.job(image_task(), model="model-a")[0])
    assert engine.model_loads == 1
    engine.run(setup.job(image_task(), model="model-b")[0])
    assert engine.model_loads == 2
    engine.run(setup.job(image_task(), model="model-a")[0])
    assert engine.model_loads == 3
    offloaded = setup.source(offload_to_cpu=True)
    engine.run(setup.job(image_task(), offloaded, model="model-a")[0])
    assert engine.model_loads == 4
    engine.run(setup.job(image_task(), offloaded, model="model-a")[0])
    assert engine.model_loads == 4


@pytest.mark.slow
def test_init_mask_and_reference_images(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    # Studio asset URLs lie: JPEG bytes at a .webp URL must still work as the init image.
    init = setup.server.add("/assets/latest.webp", Route(jpeg_bytes()))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    mask_url = setup.server.add("/assets/mask.png", Route(buf.getvalue()))

    plain = decode(engine.run(setup.job(image_task(steps=4))[0]))
    img2img_ctx, img2img_rec = setup.job(image_task(steps=4, init_image_url=init, denoise=0.5))
    img2img = decode(engine.run(img2img_ctx))
    assert img2img.size == (64, 64)
    assert img2img.tobytes() != plain.tobytes()
    assert img2img_rec.phase("generating")  # strength 0.5 samples part of the schedule

    inpaint = decode(
        engine.run(setup.job(image_task(steps=4, init_image_url=init, mask_url=mask_url))[0])
    )
    assert inpaint.size == (64, 64)
    edit = decode(engine.run(setup.job(image_task(steps=2, ref_image_url=init))[0]))
    assert edit.size == (64, 64)
    assert len(setup.server.requests("/assets/latest.webp")) == 3
    assert engine.model_loads == 1


@pytest.mark.slow
def test_lora_files_are_downloaded_and_their_directory_wired(setup: Setup) -> None:
    model_path = setup.place_model()
    lora_url = setup.server.add("/loras/style.safetensors", Route(b"not really a lora"))
    source = setup.source(ModelFile("lora", lora_url, "style.safetensors"))
    engine = setup.engine()
    ctx, rec = setup.job(image_task(prompt="a fox <lora:/etc/passwd:1>"), source)
    engine.run(ctx)
    assert (model_path.parent / "style.safetensors").read_bytes() == b"not really a lora"
    downloads = rec.phase("downloading")
    assert downloads and downloads[-1] == (17, 17, "style.safetensors")
    assert newest_model(engine).lora_model_dir == str(model_path.parent)
    assert any(level == "warn" and "/etc/passwd" in msg for level, msg in rec.logs)


@pytest.mark.slow
def test_a_cancel_during_sampling_fails_the_job_after_it(setup: Setup) -> None:
    setup.place_model()
    engine = setup.engine()
    ctx, rec = setup.job(image_task(steps=2))
    rec.on_progress = lambda phase, *_: ctx.cancelled.set() if phase == "generating" else None
    with pytest.raises(EngineError, match=r"^cancelled$"):
        engine.run(ctx)
    # The library cannot stop mid-run: sampling finished, then the result was dropped.
    assert rec.phase("generating") == [(1, 2, ""), (2, 2, "")]
    again = engine.run(setup.job(image_task())[0])
    assert decode(again).size == (64, 64)
    assert engine.model_loads == 1


_CORRUPT_JOB = """
import sys
from pathlib import Path
from typing import Any
from engines.base import JobContext
from engines.errors import EngineError
from engines.sdcpp import SdCppEngine
from protocol.tasks import ImageTask, ModelCliDefaults, ModelFile, ModelSource

root, model_file = Path(sys.argv[1]), sys.argv[2]
source = ModelSource(
    "sd-cpp",
    [ModelFile("model", "http://127.0.0.1:9/" + model_file, model_file)],
    ModelCliDefaults(1.0, 1, 64, 64),
)
engine = SdCppEngine(root)
for model in ("corrupt", "good"):
    ctx = JobContext("job", model, ImageTask("a fox", width=64, height=64), source, root)
    try:
        result = engine.run(ctx)
        print("OK", model, len(result.data), engine.model_loads, flush=True)
    except EngineError as exc:
        print("FAILED", model, exc.retryable, exc, flush=True)
engine.close()
print("CLOSED", flush=True)
"""

_RAW_LIBRARY_LOAD = """
import gc, sys
from stable_diffusion_cpp import StableDiffusion

model = StableDiffusion(model_path=sys.argv[1], verbose=False)
print("CONSTRUCTED", flush=True)
del model
gc.collect()
print("FREED", flush=True)
"""


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )


@pytest.mark.slow
def test_a_corrupt_model_fails_the_job_without_killing_the_process(setup: Setup) -> None:
    setup.place_model("corrupt", corrupt=True)
    setup.place_model("good")
    done = _run_python(_CORRUPT_JOB, str(setup.root), MODEL_FILE)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"FAILED corrupt True cannot load the sd-cpp model ({MODEL_FILE}): tensor "
        "'cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight' has wrong "
        "shape in model file"
    ), done.stdout
    assert lines[1].startswith("OK good ") and lines[1].endswith(" 1"), done.stdout
    assert lines[2] == "CLOSED"


@pytest.mark.slow
def test_the_library_alone_segfaults_freeing_a_failed_load(tiny_model: Path) -> None:
    # Why the engine checks the context itself: stable-diffusion-cpp-python 0.4.7 treats the
    # NULL context of a failed load as loaded and frees it with free_sd_ctx(NULL). If this
    # starts failing, the wrapper was fixed and engines.sdcpp._discard_failed may go.
    done = _run_python(_RAW_LIBRARY_LOAD, str(cached_tiny_sdxs(corrupt=True)))
    assert "CONSTRUCTED" in done.stdout
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stdout, done.stderr)
