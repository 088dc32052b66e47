"""Reading the engine libraries' own failure messages: real lines as the libraries print
them (with their prefixes) and near misses that must not classify."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import engines.failure_text
from engines.failure_text import (
    FailureKind,
    FailureMatch,
    classify_failure_lines,
    classify_failure_text,
    first_failure,
)
from protocol import ipc
from supervisor.pool.verdict import LossCause

VRAM = FailureKind.VRAM_OOM
RAM = FailureKind.RAM_OOM
DEVICE = FailureKind.DEVICE_ERROR

REAL_LINES: list[tuple[str, FailureKind]] = [
    # ggml-cuda (llama.cpp issue logs)
    (
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 279356.51 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        VRAM,
    ),
    ("ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 292926534144", VRAM),
    ("llama_new_context_with_model: failed to allocate compute buffers", VRAM),
    ("llama_model_load: error loading model: unable to allocate backend buffer", VRAM),
    ("llama_model_load: error loading model: unable to allocate CUDA0 buffer", VRAM),
    ("CUDA error: out of memory", VRAM),
    (
        "Error: an unknown error was encountered while running the model CUDA error: out of memory",
        VRAM,
    ),
    ("ROCm error: out of memory", VRAM),
    ("MUSA error: out of memory", VRAM),
    (
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 512.00 MiB on device 0: "
        "hipMalloc failed: out of memory",
        VRAM,
    ),
    (
        "Error: llama runner process has terminated: CUDA error: the resource allocation failed",
        VRAM,
    ),
    ("error: llama runner process has terminated: CUDA error: CUBLAS_STATUS_ALLOC_FAILED", VRAM),
    ("cudaErrorMemoryAllocation", VRAM),
    # ggml-vulkan
    ("ggml_vulkan: Device memory allocation of size 1037832192 failed.", VRAM),
    ("ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory", VRAM),
    (
        "0.02.468.179 E alloc_tensor_range: failed to allocate Vulkan0 buffer of size 1037832192",
        VRAM,
    ),
    (
        "0.02.672.374 E llama_model_load: error loading model: unable to allocate Vulkan0 buffer",
        VRAM,
    ),
    (
        "ggml_backend_alloc_ctx_tensors_from_buft: failed to allocate Vulkan0 buffer of size "
        "4831838208",
        VRAM,
    ),
    # ggml-metal
    (
        "ggml_backend_metal_buffer_type_alloc_buffer: error: failed to allocate buffer, "
        "size =  4096.00 MiB",
        VRAM,
    ),
    ("error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)", VRAM),
    # llama.cpp summaries that name no buffer, and the python binding's exception
    ("llama_init_from_model: failed to allocate compute pp buffers", VRAM),
    ("llama_kv_cache: failed to allocate buffer for kv cache", VRAM),
    ("llama_decode returned -2", VRAM),
    # stable-diffusion.cpp (both log formats of its log_printf)
    (
        "[ERROR] ggml_extend.hpp:1601 - flux alloc params backend buffer failed, num_tensors = 776",
        VRAM,
    ),
    ("ggml_extend.hpp:1725 - wan alloc compute buffer failed", VRAM),
    ("[ERROR] ggml_runner.cpp:991 - unet alloc compute graph failed", VRAM),
    (
        "ggml_extend.hpp:1650 - vae alloc runtime params backend buffer failed, num_tensors = 3",
        VRAM,
    ),
    ("pmid model params buffer allocation failed", VRAM),
    ("diffusion model compute failed: GGML status: error (failed to allocate memory)", VRAM),
    # host memory
    ("ggml_aligned_malloc: insufficient memory (attempted to allocate 5162.00 MB)", RAM),
    ("ggml_malloc: failed to allocate   12.00 MB", RAM),
    (
        "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 8589934592",
        RAM,
    ),
    ("alloc_tensor_range: failed to allocate CPU buffer of size 8589934592", RAM),
    ("llama_model_load: error loading model: unable to allocate CPU buffer", RAM),
    ("ggml_gallocr_reserve_n: failed to allocate CUDA_Host buffer of size 1048576", RAM),
    ("ggml_gallocr_reserve_n: failed to allocate ROCm_Host buffer of size 1048576", RAM),
    ("llama_context: failed to allocate output buffer of size 0.98 MiB", RAM),
    ("terminate called after throwing an instance of 'std::bad_alloc'", RAM),
    ("  what():  std::bad_alloc", RAM),
    ("gguf_init_from_file_impl: encountered bad_alloc error while reading key 3", RAM),
    ("MemoryError", RAM),
    ("MemoryError: Unable to allocate 3.00 GiB for an array", RAM),
    ("ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfHostMemory", RAM),
    ("llama_model_load: error loading model: mmap failed: Cannot allocate memory", RAM),
    # device faults
    ("CUDA error: an illegal memory access was encountered", DEVICE),
    (
        "May 15 08:57:36 red llama-swap[80783]: "
        "CUDA error: an illegal memory access was encountered",
        DEVICE,
    ),
    ("CUDA error: unspecified launch failure", DEVICE),
    ("CUDA error: misaligned address", DEVICE),
    ("CUDA error: an illegal instruction was encountered", DEVICE),
    ("CUDA error: uncorrectable ECC error encountered", DEVICE),
    ("CUDA error: the launch timed out and was terminated", DEVICE),
    ("ROCm error: an illegal memory access was encountered", DEVICE),
    (
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 8.00 MiB on device 0: cudaMalloc "
        "failed: unspecified launch failure",
        DEVICE,
    ),
    (
        "Memory access fault by GPU node-1 (Agent handle: 0x55ac14d27600) on address "
        "0x7f9587e00000. Reason: Page not present or supervisor privilege.",
        DEVICE,
    ),
    ("HW Exception by GPU node-1 (Agent handle: 0x1b0fc990) reason :GPU Hang", DEVICE),
    (
        "ggml_vulkan: device.waitForFences(...) error ErrorDeviceLost at ggml-vulkan.cpp:1234",
        DEVICE,
    ),
    ("  what():  vk::Queue::submit: ErrorDeviceLost", DEVICE),
    (
        "error: Caused GPU Timeout Error (00000002:kIOAccelCommandBufferCallbackErrorTimeout)",
        DEVICE,
    ),
    (
        "NVRM: Xid (PCI:0000:01:00): 79, pid=80798, name=python3, GPU has fallen off the bus.",
        DEVICE,
    ),
]

NEAR_MISSES = [
    "",
    "out of memory",
    "model file is out of date",
    "CUDA error",  # the abort line after the message: the message decides
    "/src/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error",
    "  current device: 0, in function ggml_backend_cuda_synchronize at ggml-cuda.cu:3067",
    "  cudaStreamSynchronize(cuda_ctx->stream())",
    "  hipMalloc((void **) &ptr, look_ahead_size)",
    "ROCm error: invalid device function",
    "ROCm error: device kernel image is invalid",
    "CUDA error: no kernel image is available for execution on the device",
    "ggml_cuda_compute_forward: RMS_NORM failed",
    # recovered from: the load goes on
    "llama_context: compute buffer allocation failed, retrying without pipeline parallelism",
    "ggml_cuda_host_malloc: failed to allocate 512.00 MiB of pinned memory: out of memory",
    "llama_model_loader: failed to allocate host buffer for async uploads for device CUDA0",
    "warning: failed to mlock 1048576-byte buffer (after previously locking 0 bytes): "
    "Cannot allocate memory",
    # not memory: a full KV cache, a too-small context, an allocator bug
    "decode: failed to find a memory slot for batch of size 512",
    "ggml_new_object: not enough space in the context's memory pool (needed 1, available 0)",
    "ggml_tallocr_alloc: not enough space in the buffer to allocate blk.0 (needed 2, available 1)",
    "graph allocation: failed to reserve memory",
    "llama_model_load: error loading model: tensor 'blk.0' data is not within the file bounds",
    # the status line of a Metal failure says nothing by itself (OOM has it too)
    "ggml_metal_graph_compute: error: command buffer 0 failed with status 5",
    # buffer sizes are logged on every load
    "llama_kv_cache_init:  CUDA_Host KV buffer size =   352.12 MiB",
    "load_tensors:        CPU buffer size =  5679.33 MiB",
    "llama_context:      CUDA0 compute buffer size =   144.00 MiB",
    "misaligned address in the tensor data of blk.3",
    "llama_decode returned -20",
]


@pytest.mark.parametrize(("line", "kind"), REAL_LINES)
def test_real_lines_are_read_as_their_kind(line: str, kind: FailureKind) -> None:
    assert classify_failure_text(line) is kind


@pytest.mark.parametrize("line", NEAR_MISSES)
def test_near_misses_are_no_failure(line: str) -> None:
    assert classify_failure_text(line) is None


def test_the_words_are_matched_whatever_their_case() -> None:
    assert classify_failure_text("CUDA ERROR: OUT OF MEMORY") is VRAM
    assert classify_failure_text("ggml_vulkan: errordevicelost") is DEVICE


def test_the_first_failure_in_a_joined_message_wins() -> None:
    # The engines join their kept error lines in the library's order.
    joined = (
        "ggml_aligned_malloc: insufficient memory (attempted to allocate 900.00 MB); "
        "alloc_tensor_range: failed to allocate CUDA0 buffer of size 1"
    )
    assert classify_failure_text(joined) is RAM
    assert classify_failure_text("CUDA error: out of memory; unspecified launch failure") is VRAM


def test_first_failure_returns_the_oldest_line_that_says_one() -> None:
    tail = [
        "llama_context:      CUDA0 compute buffer size =   144.00 MiB",
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1024.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824",
        "  current device: 0, in function ggml_backend_cuda_synchronize",
    ]
    match = first_failure(tail)
    assert match == FailureMatch(VRAM, tail[1])
    assert classify_failure_lines(tail) is VRAM
    assert classify_failure_lines(["all good", ""]) is None
    assert first_failure([]) is None


def test_first_failure_filters_by_kind_without_rereading_a_line() -> None:
    tail = [
        "CUDA error: out of memory",  # out of memory, never a device error
        "  CUDA error: an illegal memory access was encountered  ",
    ]
    assert first_failure(tail, {DEVICE}) == FailureMatch(
        DEVICE, "CUDA error: an illegal memory access was encountered"
    )
    assert first_failure(tail[:1], {DEVICE}) is None


def test_kinds_are_the_wire_reasons_and_loss_causes() -> None:
    assert FailureKind.VRAM_OOM.value == ipc.REASON_VRAM_OOM == LossCause.VRAM_OOM.value
    assert FailureKind.DEVICE_ERROR.value == ipc.REASON_DEVICE_ERROR
    assert FailureKind.RAM_OOM.value == LossCause.RAM_OOM.value


def test_the_module_imports_only_the_standard_library() -> None:
    source = Path(engines.failure_text.__file__).read_text()
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            roots.add(node.module.split(".")[0])
    assert roots <= sys.stdlib_module_names | {"__future__"}
