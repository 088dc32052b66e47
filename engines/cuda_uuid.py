"""The UUID of the one CUDA device a host sees, as NVML spells it (``GPU-…``).

The supervisor pins each host to a GPU by UUID and checks, from ``Ready``, that the host
computes on that card. ggml names devices ``CUDA0`` and cannot tell a UUID, so this asks the
CUDA driver (``libcuda``, present wherever CUDA runs, with a stable ABI: no hunt for the
runtime version a wheel bundled) for device 0, which under ``CUDA_VISIBLE_DEVICES`` is the
host's card. Returns "" wherever the driver cannot answer; never raises, never allocates.
"""

from __future__ import annotations

import ctypes
from typing import Final

_DRIVER_LIBRARY: Final = "libcuda.so.1"
_CUDA_SUCCESS: Final = 0
_UUID_BYTES: Final = 16


def format_uuid(raw: bytes) -> str:
    """NVML's text form of a 16-byte device UUID."""
    h = raw.hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def cuda_device_uuid(ordinal: int = 0) -> str:
    """``GPU-…`` of CUDA device ``ordinal`` (0: the host's own), or "" when unknown."""
    try:
        driver = ctypes.CDLL(_DRIVER_LIBRARY)
    except OSError:
        return ""
    device = ctypes.c_int()
    raw = (ctypes.c_ubyte * _UUID_BYTES)()
    try:
        if driver.cuInit(0) != _CUDA_SUCCESS:
            return ""
        if driver.cuDeviceGet(ctypes.byref(device), ordinal) != _CUDA_SUCCESS:
            return ""
        if driver.cuDeviceGetUuid(ctypes.byref(raw), device) != _CUDA_SUCCESS:
            return ""
    except AttributeError:  # a driver too old to have the call
        return ""
    return format_uuid(bytes(raw))
