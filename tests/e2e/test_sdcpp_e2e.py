"""Image jobs end to end: the real supervisor (a real sd-cpp engine host subprocess running
stable-diffusion-cpp-python on the generated SDXS checkpoint) against the scripted studio
peer, results arriving as real multipart uploads.

The 883 MB checkpoint is hard-linked once per session into a shared models_root at the
path provisioning looks for (``<models_root>/<sanitised model id>/<file>``), so no test
copies or downloads it; the other files of an offer (a LoRA) come over real HTTP.

The crash test uses a real native fault, not a signal sent from outside: a LoRA whose
``lora_up``/``lora_down`` ranks disagree makes stable-diffusion.cpp 0.4.7 hit
``GGML_ASSERT(ggml_can_mul_mat(a, b))`` while applying it, and ggml aborts the whole
process (SIGABRT) in the middle of the job.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import pytest

# The real library must be installed (scripts/install): a missing one fails, never skips.
import stable_diffusion_cpp  # noqa: F401
from PIL import Image

from engines.provision import model_dir
from protocol import ipc, studio
from protocol.tasks import ImageTask, ModelCliDefaults, ModelFile, ModelSource
from supervisor.pool.slot import Slot
from supervisor.studio.job_runner import JobRunner
from supervisor.worker_state import ActiveJob
from tests.support.file_server import FileServer, Route, serve_files
from tests.support.models.tiny_sdxs import write_tiny_sdxs
from tests.support.studio_peer import PeerConnection, StudioPeer, Upload, make_offer, running_peer
from tests.support.supervisor_harness import (
    RunningSupervisor,
    engine_slot,
    model_loads,
    running_supervisor,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL_ID = "tiny/sdxs:e2e"
CRASH_MODEL_ID = "tiny/sdxs:bad-lora"
MODEL_FILE = "tiny-sdxs.gguf"
JOB_TIMEOUT_S = 60.0
# Text-encoder layers the broken LoRA targets (kohya names; the model's q_proj is 768x768).
_LORA_TARGETS = 2
_CLIP_WIDTH = 768


@dataclass(frozen=True)
class Models:
    root: Path
    server: FileServer

    def source(self, *extra: ModelFile, steps: int = 1) -> ModelSource:
        model = ModelFile("model", self.server.url(f"/models/{MODEL_FILE}"), MODEL_FILE)
        return ModelSource("sd-cpp", [model, *extra], ModelCliDefaults(1.0, steps, 64, 64))


def mismatched_lora() -> bytes:
    """A safetensors LoRA whose ``lora_up`` has rank 7 and ``lora_down`` rank 4."""
    tensors: dict[str, np.ndarray] = {}
    for i in range(_LORA_TARGETS):
        base = f"lora_te_text_model_encoder_layers_{i}_self_attn_q_proj"
        tensors[f"{base}.lora_up.weight"] = np.full((_CLIP_WIDTH, 7), 0.01, np.float32)
        tensors[f"{base}.lora_down.weight"] = np.full((4, _CLIP_WIDTH), 0.01, np.float32)
        tensors[f"{base}.alpha"] = np.array(4.0, np.float32)
    header: dict[str, object] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        blob = array.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    root = tmp_path_factory.mktemp("sdcpp-e2e-models")
    for model in (MODEL_ID, CRASH_MODEL_ID):
        write_tiny_sdxs(model_dir(root, model, "sdcpp") / MODEL_FILE)  # a hard link
    with serve_files() as server:
        yield Models(root, server)


def image_task(job: str, **fields: object) -> ImageTask:
    values: dict[str, object] = {"prompt": f"an aurora fox ({job})", "width": 64, "height": 64}
    return ImageTask(**(values | {"seed": 7} | fields))  # type: ignore[arg-type]


def offer(job_id: str, task: ImageTask, source: ModelSource, model: str = MODEL_ID) -> studio.Offer:
    return make_offer(job_id, task, source, model)


def sdcpp_slot(run: RunningSupervisor) -> Slot:
    return engine_slot(run, "sdcpp")


async def welcomed(peer: StudioPeer) -> PeerConnection:
    conn = await peer.next_connection(timeout_s=JOB_TIMEOUT_S)
    hello = await conn.handshake()
    assert "sd-cpp:*" in hello.capabilities.supported_models_per_kind["image"]
    return conn


async def run_image(peer: StudioPeer, conn: PeerConnection, frame: studio.Offer) -> Upload:
    """Offer, expect accept, then only heartbeats/logs until the upload lands."""
    job_id = frame.claim.job_id
    uploads = len(peer.uploads)
    await conn.send(frame)
    assert (await conn.expect(studio.Accept)).job_id == job_id
    with anyio.fail_after(JOB_TIMEOUT_S):
        while len(peer.uploads) == uploads:
            got = await conn.recv(timeout_s=JOB_TIMEOUT_S)
            assert isinstance(got, studio.Heartbeat | studio.LogBatch), got
    upload = peer.uploads[-1]
    assert (upload.worker_id, upload.job_id) == ("w-1", job_id)
    return upload


async def run_failing(conn: PeerConnection, frame: studio.Offer) -> studio.Fail:
    job_id = frame.claim.job_id
    await conn.send(frame)
    assert (await conn.expect(studio.Accept)).job_id == job_id
    fail = await conn.expect(studio.Fail, timeout_s=JOB_TIMEOUT_S)
    assert fail.job_id == job_id
    return fail


def image_of(upload: Upload) -> tuple[bytes, Image.Image]:
    assert [p.name for p in upload.parts] == ["prompt", "ext", "image"]
    data = upload.parts[2].data
    image = Image.open(io.BytesIO(data))
    image.load()
    return data, image


async def end_session(run: RunningSupervisor, conn: PeerConnection) -> None:
    """Stop the worker and read until it closes the socket (answering the close)."""
    run.sup.stop.set()
    assert await conn.wait_closed(timeout_s=JOB_TIMEOUT_S) == 1000
    assert await run.wait_exit(timeout_s=JOB_TIMEOUT_S) == 0


async def test_images_are_uploaded_reproducibly_on_a_warm_model_with_step_progress(
    tmp_path: Path,
    models: Models,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.session.jobs")
    # Every Progress message the host sends reaches the job runner's progress callback;
    # record them on the way (the callback itself still runs).
    seen: list[tuple[str, str, int, int]] = []
    original = JobRunner._progress_logger

    def recording(self: JobRunner, active: ActiveJob) -> object:
        inner = original(self, active)

        def on_progress(msg: ipc.Progress) -> None:
            seen.append((msg.job_id, msg.phase, msg.step, msg.total))
            inner(msg)

        return on_progress

    monkeypatch.setattr(JobRunner, "_progress_logger", recording)
    source = models.source()
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, engines="sdcpp", models_root=models.root
        ) as run,
    ):
        conn = await welcomed(peer)
        slot = sdcpp_slot(run)

        _, webp = image_of(
            await run_image(peer, conn, offer("job-webp", image_task("a", ext="webp"), source))
        )
        assert (webp.format, webp.size) == ("WEBP", (64, 64))
        assert model_loads(slot) == 1

        png_up = await run_image(peer, conn, offer("job-png", image_task("a", ext="png"), source))
        assert png_up.parts[1].data == b"png"
        assert png_up.parts[2].content_type == "image/png"
        png_data, png = image_of(png_up)
        assert (png.format, png.size) == ("PNG", (64, 64))
        assert png.convert("RGB").tobytes() == webp.convert("RGB").tobytes()  # lossless webp

        again_data, _ = image_of(
            await run_image(peer, conn, offer("job-png-2", image_task("a", ext="png"), source))
        )
        assert again_data == png_data, "same seed, same bytes"
        other_data, _ = image_of(
            await run_image(
                peer, conn, offer("job-png-3", image_task("a", ext="png", seed=8), source)
            )
        )
        assert other_data != png_data

        steps_up = await run_image(
            peer, conn, offer("job-steps", image_task("b", ext="png"), models.source(steps=3))
        )
        assert image_of(steps_up)[1].size == (64, 64)
        # Warm: five jobs, one load, and the checkpoint was never requested over HTTP.
        assert model_loads(slot) == 1
        assert slot.restarts == 0
        # The server is shared by the session (other tests fetch LoRAs from it), so look
        # at the checkpoint's path only.
        assert models.server.requests(f"/models/{MODEL_FILE}") == []
        generating = [(s, t) for j, p, s, t in seen if j == "job-steps" and p == "generating"]
        assert generating == [(1, 3), (2, 3), (3, 3)]
        assert not [p for j, p, *_ in seen if j == "job-steps" and p == "loading"]
        # The operator's (throttled) log shows the same progress, shipped to the studio too.
        logged = [r.getMessage() for r in caplog.records]
        assert "progress job job-steps phase=generating step=1/3" in logged
        assert "progress job job-steps phase=generating step=3/3" in logged
        await end_session(run, conn)
    shipped = {
        e.message for f in conn.received if isinstance(f, studio.LogBatch) for e in f.entries
    }
    assert "progress job job-steps phase=generating step=3/3" in shipped


async def test_a_native_crash_mid_job_fails_retryable_then_poison_and_the_session_survives(
    tmp_path: Path, models: Models, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engines.sdcpp")
    lora_url = models.server.add("/loras/broken.safetensors", Route(mismatched_lora()))
    crashing = models.source(ModelFile("lora", lora_url, "broken.safetensors"))
    task = image_task("c", prompt="a fox <lora:broken:1>")
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, engines="sdcpp", models_root=models.root
        ) as run,
    ):
        conn = await welcomed(peer)
        slot = sdcpp_slot(run)
        first_pid = slot.pid

        fail = await run_failing(conn, offer("job-crash", task, crashing, model=CRASH_MODEL_ID))
        assert fail.retryable is True
        assert "killed by SIGABRT" in fail.error and "job-crash" in fail.error, fail.error
        assert len(models.server.requests("/loras/broken.safetensors")) == 1
        # The host's stderr (read by the supervisor) names the native fault.
        assert any(
            "GGML_ASSERT(ggml_can_mul_mat(a, b)) failed" in r.getMessage() for r in caplog.records
        )

        # A new host comes up; the studio session never noticed: same socket, heartbeats on.
        assert await slot.wait_ready(JOB_TIMEOUT_S)
        assert slot.pid != first_pid
        assert slot.restarts == 1 and slot.restart_causes["signal"] == 1
        await conn.expect(studio.Heartbeat)
        assert len(peer.connections) == 1 and run.sup.lanes[0].state.sessions_welcomed == 1

        # The fresh host passed its probe (ready again): that loss was the job's, a strike.
        # The studio retries the same job: it takes the host down again (still retryable at
        # the loss), and once the next host proves itself it is poison.
        fail = await run_failing(conn, offer("job-crash", task, crashing, model=CRASH_MODEL_ID))
        assert fail.retryable is True
        assert "killed by SIGABRT" in fail.error, fail.error
        assert await slot.wait_ready(JOB_TIMEOUT_S)
        assert run.sup.pool.poison.is_poison("job-crash")
        restarts = slot.restarts
        assert restarts == 2

        # A third offer of it is refused without touching the host ...
        fail = await run_failing(conn, offer("job-crash", task, crashing, model=CRASH_MODEL_ID))
        assert fail.retryable is False
        assert "has already taken down an engine host twice" in fail.error, fail.error
        assert slot.restarts == restarts
        # ... and an ordinary job runs on the fresh host, over the same session.
        _, image = image_of(
            await run_image(peer, conn, offer("job-after", image_task("d"), models.source()))
        )
        assert image.size == (64, 64)
        assert model_loads(slot) == 1
        await conn.expect(studio.Heartbeat)
        assert len(peer.connections) == 1
        assert run.sup.lanes[0].state.job_outcomes["failed_retryable"] == 2
        assert run.sup.lanes[0].state.job_outcomes["failed_final"] == 1
        await end_session(run, conn)
