"""Read scalar metadata from a GGUF file's header without loading the model.

The llama engine needs the training context length before it creates a llama.cpp context
(the context size is fixed at load time, and llama.cpp does not cap it), and a clear
"this is not a GGUF file" before handing garbage to the C++ loader. This reads the
key/value section only, skipping arrays, and stops as soon as the wanted keys are seen.
It never reads tensor data and never imports an inference library.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

GGUF_MAGIC: Final = b"GGUF"

Scalar = int | float | bool | str

# GGUF value type -> struct format of one element (little-endian).
_SCALAR_FORMATS: Final[dict[int, str]] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING: Final = 8
_ARRAY: Final = 9
_MAX_KEY_COUNT: Final = 1 << 24
_MAX_STRING_BYTES: Final = 64 << 20  # a chat template is tens of KiB; garbage is not


class GgufFormatError(ValueError):
    """The file is not a GGUF file, or its header is cut short or malformed."""


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GgufFormatError("header is truncated")
    return data


def _read_u32(f: BinaryIO) -> int:
    value: int = struct.unpack("<I", _read_exact(f, 4))[0]
    return value


def _read_u64(f: BinaryIO) -> int:
    value: int = struct.unpack("<Q", _read_exact(f, 8))[0]
    return value


def _read_string(f: BinaryIO) -> str:
    length = _read_u64(f)
    if length > _MAX_STRING_BYTES:
        raise GgufFormatError(f"implausible string length {length}")
    return _read_exact(f, length).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int) -> Scalar | None:
    """One value of type ``vtype``; arrays are skipped and read as None."""
    if vtype == _STRING:
        return _read_string(f)
    if vtype == _ARRAY:
        etype, count = _read_u32(f), _read_u64(f)
        if etype == _STRING:
            for _ in range(count):
                f.seek(_read_u64(f), 1)
        elif etype in _SCALAR_FORMATS:
            f.seek(struct.calcsize(_SCALAR_FORMATS[etype]) * count, 1)
        else:
            raise GgufFormatError(f"unsupported array element type {etype}")
        return None
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is None:
        raise GgufFormatError(f"unknown value type {vtype}")
    value: Scalar = struct.unpack(fmt, _read_exact(f, struct.calcsize(fmt)))[0]
    return value


def iter_metadata(path: Path) -> Iterator[tuple[str, Scalar]]:
    """Scalar header keys of ``path`` in file order (arrays are skipped).

    Raises ``GgufFormatError`` for a file that is not GGUF (v2/v3) or whose header is cut
    short, and ``OSError`` when it cannot be read.
    """
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GgufFormatError("not a GGUF file (bad magic bytes)")
        version = _read_u32(f)
        if version not in (2, 3):
            raise GgufFormatError(f"unsupported GGUF version {version}")
        _read_u64(f)  # tensor count
        n_kv = _read_u64(f)
        if n_kv > _MAX_KEY_COUNT:
            raise GgufFormatError(f"implausible metadata key count {n_kv}")
        for _ in range(n_kv):
            key = _read_string(f)
            value = _read_value(f, _read_u32(f))
            if value is not None:
                yield key, value


def training_context(path: Path) -> int:
    """The model's training context length (``<arch>.context_length``), 0 when absent.

    Converters write ``general.architecture`` and the hyperparameters before the
    vocabulary arrays, so this usually stops long before the end of the header.
    """
    arch: str | None = None
    for key, value in iter_metadata(path):
        if key == "general.architecture" and isinstance(value, str):
            arch = value
        elif arch is not None and key == f"{arch}.context_length":
            return value if isinstance(value, int) and not isinstance(value, bool) else 0
    return 0
