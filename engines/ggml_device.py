"""Which device a ggml-based library computes on, and a probe of it, through ggml itself.

llama.cpp and stable-diffusion.cpp both carry ggml and export its backend registry, so the
question "is this build on the GPU the supervisor pinned us to?" is answered by the library
that will do the work, not by a guess from the environment: the registry lists the devices
of the backends compiled in (CUDA, ROCm, Vulkan, Metal; none when ``CUDA_VISIBLE_DEVICES``
hides every GPU), and the probe allocates and frees a buffer through the device's own buffer
type, which initialises that backend on that device exactly as a model load would (on CUDA:
``cudaMalloc`` on device 0, the only one the host sees). The NVML-style UUID comes from the
CUDA driver (``engines.cuda_uuid``). Called from the host's threads; never loads a model.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from engines.cuda_uuid import cuda_device_uuid
from engines.errors import EngineError
from protocol.ipc import Backend, ComputeDevice

_MIB: Final = 2**20
# ggml backend registry names (``ggml_backend_reg_name``) of the GPU backends we report;
# a HIP build of ggml-cuda registers as "ROCm", older Metal builds as "Metal", newer "MTL".
_GPU_REGISTRIES: Final[dict[str, Backend]] = {
    "cuda": "cuda",
    "rocm": "rocm",
    "hip": "rocm",
    "vulkan": "vulkan",
    "metal": "metal",
    "mtl": "metal",
}

_P = ctypes.c_void_p


@dataclass(frozen=True)
class GgmlGpu:
    """The first GPU device of the registry: the host sees exactly one."""

    backend: Backend
    name: str  # the device's description ("NVIDIA H200"), else its ggml name ("CUDA0")
    handle: int  # ggml_backend_dev_t


class GgmlRegistry:
    """ggml's backend registry in one loaded library (any handle whose symbols reach ggml)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        # Fresh function objects: setting restype on ``lib.<name>`` would change the ones
        # the library's own binding may share.
        self._dev_count = ctypes.CFUNCTYPE(ctypes.c_size_t)(("ggml_backend_dev_count", lib))
        self._dev_get = ctypes.CFUNCTYPE(_P, ctypes.c_size_t)(("ggml_backend_dev_get", lib))
        self._dev_name = ctypes.CFUNCTYPE(ctypes.c_char_p, _P)(("ggml_backend_dev_name", lib))
        self._dev_description = ctypes.CFUNCTYPE(ctypes.c_char_p, _P)(
            ("ggml_backend_dev_description", lib)
        )
        self._dev_reg = ctypes.CFUNCTYPE(_P, _P)(("ggml_backend_dev_backend_reg", lib))
        self._reg_name = ctypes.CFUNCTYPE(ctypes.c_char_p, _P)(("ggml_backend_reg_name", lib))
        self._dev_buffer_type = ctypes.CFUNCTYPE(_P, _P)(("ggml_backend_dev_buffer_type", lib))
        self._alloc = ctypes.CFUNCTYPE(_P, _P, ctypes.c_size_t)(
            ("ggml_backend_buft_alloc_buffer", lib)
        )
        self._free = ctypes.CFUNCTYPE(None, _P)(("ggml_backend_buffer_free", lib))

    def devices(self) -> list[tuple[str, str, int]]:
        """(registry name, device name, handle) of every device, in registry order."""
        found = []
        for i in range(self._dev_count()):
            dev = self._dev_get(i)
            if not dev:
                continue
            reg = self._dev_reg(dev)
            reg_name = (self._reg_name(reg) or b"").decode() if reg else ""
            found.append((reg_name, (self._dev_name(dev) or b"").decode(), dev))
        return found

    def gpu(self) -> GgmlGpu | None:
        for reg_name, dev_name, handle in self.devices():
            backend = _GPU_REGISTRIES.get(reg_name.lower())
            if backend is not None:
                description = (self._dev_description(handle) or b"").decode().strip()
                return GgmlGpu(backend, description or dev_name, handle)
        return None

    def allocate_and_free(self, handle: int, nbytes: int) -> None:
        """Allocate ``nbytes`` on the device ``handle`` through its buffer type, then free
        them; ``EngineError`` when the allocation fails."""
        buffer_type = self._dev_buffer_type(handle)
        if not buffer_type:
            raise EngineError("the device has no buffer type to allocate from")
        buffer = self._alloc(buffer_type, max(1, nbytes))
        if not buffer:
            raise EngineError(f"allocating {nbytes / _MIB:.2f} MiB on the device failed")
        self._free(buffer)


def compute_device(registry: GgmlRegistry) -> ComputeDevice:
    """The GPU the library computes on (with the CUDA UUID where the driver tells), else
    the CPU."""
    gpu = registry.gpu()
    if gpu is None:
        return ComputeDevice("cpu")
    uuid = cuda_device_uuid() if gpu.backend == "cuda" else ""
    return ComputeDevice(gpu.backend, gpu.name, uuid)


def probe_device(registry: GgmlRegistry, nbytes: int, native_errors: Callable[[], str]) -> str:
    """Allocate and free ``nbytes`` on the library's GPU; ``native_errors`` gives the
    library's own error lines of the attempt (ggml says why an allocation failed). The CPU
    has nothing to prove."""
    gpu = registry.gpu()
    if gpu is None:
        return "cpu: nothing to probe"
    try:
        registry.allocate_and_free(gpu.handle, nbytes)
    except EngineError as exc:
        detail = native_errors()
        suffix = f" ({detail})" if detail else ""
        raise EngineError(f"{gpu.backend} {gpu.name}: {exc}{suffix}") from None
    return f"{gpu.backend} {gpu.name}: allocated and freed {nbytes / _MIB:.2f} MiB"
