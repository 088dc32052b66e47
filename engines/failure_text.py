"""What an engine library's own words say about why it failed: the GPU ran out of memory,
the host ran out of memory, or the device faulted.

Both the engine hosts (to give a failed job its reason) and the supervisor (to read a dead
host's last stderr lines) import this module, so it imports nothing but the standard
library: a host must not load the supervisor's dependencies, nor the supervisor llama.cpp.
It only reads text. It never decides what a failure does to a job, a slot or a device, and
it never classifies on generic words ("out of memory" alone, "failed", "error"): every
pattern below is a message that llama.cpp, ggml, stable-diffusion.cpp or the GPU runtimes
they call print, quoted with its source so a library upgrade can be checked against it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final


class FailureKind(enum.StrEnum):
    """What failed. The values are the wire reasons (``protocol.ipc.REASON_VRAM_OOM``,
    ``REASON_DEVICE_ERROR``) and the supervisor's ``LossCause.RAM_OOM``."""

    VRAM_OOM = "vram_oom"  # a GPU (device) buffer could not be allocated
    RAM_OOM = "ram_oom"  # a host-memory allocation failed (CPU buffers, malloc, new)
    DEVICE_ERROR = "device_error"  # the device faulted (illegal address, launch failure, lost)


@dataclass(frozen=True)
class FailureMatch:
    kind: FailureKind
    line: str  # the text that said it, stripped


# Where a kind's patterns and a buffer-named message match at the same place, the first of
# these wins: an out-of-memory text also reads as a runtime error ("CUDA error: out of memory").
_PRIORITY: Final = (FailureKind.VRAM_OOM, FailureKind.RAM_OOM, FailureKind.DEVICE_ERROR)

_VRAM_OOM: Final = (
    # ggml/src/ggml-cuda/ggml-cuda.cu, ggml_backend_cuda_buffer_type_alloc_buffer (HIP and
    # MUSA builds print the same format: cudaMalloc is a macro for hipMalloc there):
    #   "%s: allocating %.2f MiB on device %d: cudaMalloc failed: %s"   (cudaGetErrorString)
    r"\b(?:cuda|hip|musa)Malloc\w* failed: out of memory\b",
    # ggml/src/ggml-cuda/ggml-cuda.cu, ggml_cuda_error: GGML_CUDA_NAME " error: %s" with
    # GGML_CUDA_NAME "CUDA", "ROCm" or "MUSA" (HIP builds said "CUDA" before that macro)
    r"\b(?:CUDA|ROCm|HIP|MUSA) error: out of memory\b",
    # ggml-cuda/common.cuh, cublas_get_error_str through CUBLAS_CHECK: cublasGetStatusString
    # on CUDA >= 12 ("CUDA error: the resource allocation failed"), the enum name before
    r"\b(?:CUDA|ROCm|HIP|MUSA) error: the resource allocation failed\b",
    r"\b(?:CUBLAS|HIPBLAS)_STATUS_ALLOC_FAILED\b",
    r"\b(?:cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY|hipErrorOutOfMemory)\b",
    # ggml/src/ggml-vulkan/ggml-vulkan.cpp, ggml_vk_create_buffer, catching vk::SystemError:
    #   "ggml_vulkan: Device memory allocation of size %zu failed."
    #   "ggml_vulkan: %s" e.what() = "vk::Device::allocateMemory: ErrorOutOfDeviceMemory"
    r"\bdevice memory allocation of size \d+ failed\b",
    r"\b(?:ErrorOutOfDeviceMemory|VK_ERROR_OUT_OF_DEVICE_MEMORY|OutOfDeviceMemoryError)\b",
    # ggml/src/ggml-metal (ggml_metal_buffer_init / ggml_backend_metal_buffer_type_alloc_buffer):
    #   "%s: error: failed to allocate buffer, size = %8.2f MiB"
    r"\bfailed to allocate buffer, size = ",
    # ggml-metal graph compute, "error: %s" with the command buffer's error description:
    #   "Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"
    r"CommandBufferCallbackErrorOutOfMemory\b",
    # llama.cpp src/llama-model.cpp before buffers were named (0.2.x era):
    #   "llama_model_load: error loading model: unable to allocate backend buffer"
    # (now "unable to allocate %s buffer": see _BUFFER_NAMED)
    r"\bunable to allocate backend buffer\b",
    # llama.cpp src/llama-context.cpp: LLAMA_LOG_ERROR "%s: failed to allocate compute buffers",
    # throw "failed to allocate compute pp buffers" / "... tg buffers"; src/llama-kv-cache.cpp
    # "failed to allocate buffer for kv cache"; llama-memory-recurrent.cpp "... for rs cache";
    # llama-adapter.cpp "... for lora adapter" / "... for control vector". The warning
    # "compute buffer allocation failed, retrying without pipeline parallelism" is recovered
    # from and deliberately matches nothing.
    r"\bfailed to allocate compute (?:pp |tg )?buffers\b",
    r"\bfailed to allocate buffer for (?:kv cache|rs cache|lora adapter|control vector)\b",
    # llama.cpp src/llama-context.cpp decode/encode: GGML_STATUS_ALLOC_FAILED returns -2, which
    # llama-cpp-python (llama_cpp/_internals.py) raises as "llama_decode returned -2"
    r"\bllama_(?:decode|encode) returned -2\b",
    # ggml/src/ggml.c ggml_status_to_string(GGML_STATUS_ALLOC_FAILED), as stable-diffusion.cpp's
    # "%s compute failed: %s" prints it
    r"\bGGML status: error \(failed to allocate memory\)",
    # stable-diffusion.cpp ggml_extend.hpp, GGMLRunner (LOG_ERROR, "[ERROR] file:line - " or
    # "file:line - " before it): "%s alloc params backend buffer failed, num_tensors = %i",
    # "%s alloc runtime params backend buffer failed, ...", "%s alloc partial runtime params
    # backend buffer failed, ...", "%s alloc compute buffer failed", "%s alloc compute graph
    # failed"; pmid.hpp "pmid model params buffer allocation failed"; "%s: failed to allocate
    # the compute buffer" (found in libstable-diffusion.so of stable-diffusion-cpp-python 0.4.7)
    r"\balloc (?:partial )?(?:runtime )?params backend buffer failed\b",
    r"\balloc compute (?:buffer|graph) failed\b",
    r"\bparams buffer allocation failed\b",
    r"\bfailed to allocate the compute buffer\b",
)

_RAM_OOM: Final = (
    # ggml/src/ggml.c ggml_aligned_malloc (posix_memalign gave ENOMEM):
    #   "%s: %s (attempted to allocate %6.2f MB)" with "insufficient memory"
    r"\binsufficient memory \(attempted to allocate\b",
    # ggml/src/ggml.c ggml_malloc / ggml_calloc: "%s: failed to allocate %6.2f MB", then abort
    r"\bggml_(?:malloc|calloc): failed to allocate\b",
    # ggml/src/ggml-backend.cpp ggml_backend_cpu_buffer_type_alloc_buffer and ggml-cpu/amx:
    #   "%s: failed to allocate buffer of size %zu"
    r"\bggml_backend_(?:cpu|amx)_buffer_type_alloc_buffer: failed to allocate\b",
    # llama.cpp src/llama-context.cpp output_reserve (a host buffer type):
    #   "%s: failed to allocate output buffer of size %.2f MiB"
    r"\bfailed to allocate output buffer of size\b",
    # C++ new: libstdc++'s terminate handler "terminate called after throwing an instance of
    # 'std::bad_alloc'" / "  what():  std::bad_alloc"; ggml/src/gguf.cpp "%s: encountered
    # bad_alloc error while reading key %li"
    r"\bstd::bad_alloc\b|\bbad_alloc error\b",
    # CPython, when the Python side of a host (PIL, numpy, the wrappers) cannot allocate
    r"\bMemoryError\b",
    # Vulkan: an allocation inside the driver, in host memory (vk::OutOfHostMemoryError)
    r"\b(?:ErrorOutOfHostMemory|VK_ERROR_OUT_OF_HOST_MEMORY|OutOfHostMemoryError)\b",
    # llama.cpp src/llama-mmap.cpp: throw "mmap failed: %s" with strerror(ENOMEM). Not the
    # mlock warning ("failed to mlock ...: Cannot allocate memory"): the load goes on.
    r"\bmmap failed: cannot allocate memory\b",
)

_DEVICE_ERROR: Final = (
    # cudaGetErrorString / hipGetErrorString of sticky kernel faults, as ggml_cuda_error prints
    # them ("CUDA error: an illegal memory access was encountered", then "  current device: 0,
    # in function ggml_backend_cuda_synchronize at .../ggml-cuda.cu:3067" and an abort) or as
    # any later call reports them ("cudaMalloc failed: unspecified launch failure")
    r"\ban illegal memory access was encountered\b",
    r"\bunspecified launch failure\b",
    r"\b(?:CUDA|ROCm|HIP|MUSA) error: (?:misaligned address|an illegal instruction was "
    r"encountered|hardware stack error|invalid program counter|the launch timed out and was "
    r"terminated|uncorrectable ECC error encountered|uncorrectable NVLink error|device-side "
    r"assert triggered|unknown error|operation not supported on global/shared address space"
    r"|the GPU program failed to execute)",
    r"\b(?:cudaErrorIllegalAddress|cudaErrorLaunchFailure|cudaErrorMisalignedAddress"
    r"|cudaErrorIllegalInstruction|cudaErrorHardwareStackError|cudaErrorECCUncorrectable"
    r"|CUDA_ERROR_ILLEGAL_ADDRESS|CUDA_ERROR_LAUNCH_FAILED|CUDA_ERROR_ECC_UNCORRECTABLE"
    r"|hipErrorIllegalAddress|hipErrorLaunchFailure|CUBLAS_STATUS_EXECUTION_FAILED)\b",
    # ROCm's runtime (ROCr), then SIGABRT: "Memory access fault by GPU node-1 (Agent handle:
    # 0x55ac14d27600) on address 0x7f9587e00000. Reason: Page not present or supervisor
    # privilege." and "HW Exception by GPU node-1 (Agent handle: 0x1b0fc990) reason :GPU Hang"
    r"\b(?:memory access fault|HW exception) by GPU node\b",
    # Vulkan: VK_CHECK in ggml-vulkan.cpp prints "ggml_vulkan: %s error %s at %s:%d" with
    # to_string(result) = "ErrorDeviceLost"; an uncaught vk::DeviceLostError says
    # "vk::Queue::submit: ErrorDeviceLost"
    r"\b(?:ErrorDeviceLost|VK_ERROR_DEVICE_LOST|DeviceLostError)\b",
    # ggml-metal: "%s: error: command buffer %d failed with status %d" then "error: %s" with
    # e.g. "Caused GPU Timeout Error (00000002:kIOAccelCommandBufferCallbackErrorTimeout)" or
    # "...ErrorPageFault". The status line alone says nothing: the out-of-memory one has it too.
    r"CommandBufferCallbackError(?!OutOfMemory)[a-z]+",
    # The NVIDIA kernel driver (dmesg, the journal), when such lines reach the tail:
    #   "NVRM: Xid (PCI:0000:01:00): 79, pid=..., GPU has fallen off the bus."
    r"\bNVRM: Xid\b|\bGPU has fallen off the bus\b",
)

# llama.cpp src/llama-model.cpp: throw "unable to allocate %s buffer" (ggml_backend_buft_name);
# ggml/src/ggml-alloc.c alloc_tensor_range and ggml_gallocr_reserve_n: "%s: failed to
# allocate %s buffer of size %zu". Real lines: "alloc_tensor_range: failed to allocate Vulkan0
# buffer of size 1037832192", "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size
# 292926534144", "llama_model_load: error loading model: unable to allocate CPU buffer".
# The buffer's name says whose memory ran out, see _HOST_BUFFER. ("failed to allocate host
# buffer for async uploads" is a debug line with a fallback: "host" is no buffer name.)
_BUFFER_NAMED: Final = re.compile(
    r"\b(?:failed|unable) to allocate (?!(?:output|host|the|backend)\b)(?P<buft>[\w\[\]:.-]+) "
    r"buffer\b",
    re.IGNORECASE,
)
# Host buffer types: "CPU", "CPU_Mapped", "CPU_REPACK", "AMX", and the pinned host memory of a
# GPU backend ("CUDA_Host", "ROCm_Host", "Vulkan_Host"): page-locked, but RAM all the same.
_HOST_BUFFER: Final = re.compile(r"CPU\w*|\w+_Host|AMX", re.IGNORECASE)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


_KIND_PATTERNS: Final = {
    FailureKind.VRAM_OOM: _compile(_VRAM_OOM),
    FailureKind.RAM_OOM: _compile(_RAM_OOM),
    FailureKind.DEVICE_ERROR: _compile(_DEVICE_ERROR),
}


def classify_failure_text(text: str) -> FailureKind | None:
    """The kind of failure ``text`` reports, or None when it names none of them.

    - A GPU, Vulkan or Metal buffer allocation failed, a CUDA / ROCm / cuBLAS allocation
      error, llama.cpp's or stable-diffusion.cpp's summary of a failed allocation that names
      no buffer: ``VRAM_OOM``.
    - A host allocation failed (ggml's aligned malloc, a CPU or pinned ``*_Host`` buffer,
      ``std::bad_alloc``, Python's ``MemoryError``, Vulkan's host memory): ``RAM_OOM``. The
      memory behind a CPU buffer is RAM on every build: freeing VRAM would not help, and on a
      CPU-only build RAM is the only memory there is, so the memory governor must not take
      it for the GPU's.
    - The device faulted (CUDA / HIP illegal address, launch failure, ECC, device-side
      assert; ROCm memory access fault; Vulkan device lost; a Metal command buffer error
      other than out of memory; an NVIDIA Xid): ``DEVICE_ERROR``.
    - Anything else, generic words included ("out of memory", "model file is out of date"):
      None.

    Where the text reports several, the one written first wins (a joined message keeps the
    library's order, and the first words name the cause); at the same place an
    out-of-memory reading wins over a device error.
    """
    found: list[tuple[int, int, FailureKind]] = []
    named = _BUFFER_NAMED.search(text)
    if named is not None:
        host = _HOST_BUFFER.fullmatch(named["buft"]) is not None
        kind = FailureKind.RAM_OOM if host else FailureKind.VRAM_OOM
        found.append((named.start(), _PRIORITY.index(kind), kind))
    for kind, pattern in _KIND_PATTERNS.items():
        match = pattern.search(text)
        if match is not None:
            found.append((match.start(), _PRIORITY.index(kind), kind))
    return min(found)[2] if found else None


def first_failure(
    lines: Iterable[str], kinds: Collection[FailureKind] = frozenset(FailureKind)
) -> FailureMatch | None:
    """The first of ``lines`` (oldest first: a host's last stderr lines, an engine's kept
    errors) whose kind is among ``kinds``, with its kind; None if no line says one.

    The first is the cause: ggml names the allocation that failed and then unwinds through
    generic summaries, and a CUDA fault is followed by its abort. Each line has one kind
    (:func:`classify_failure_text`), so ``kinds`` filters readings, it never re-reads a line.
    """
    for raw in lines:
        kind = classify_failure_text(raw)
        if kind is not None and kind in kinds:
            return FailureMatch(kind, raw.strip())
    return None


def classify_failure_lines(lines: Iterable[str]) -> FailureKind | None:
    """The kind of the first line that reports a failure (:func:`first_failure`), or None."""
    match = first_failure(lines)
    return match.kind if match is not None else None
