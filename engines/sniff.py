"""Image container detection by magic bytes (protocol.md §9.3).

Studio asset URLs lie about their format (JPEG bytes at ``latest.webp``) and the decoders
downstream pick by file extension, so an input image's extension comes from its first bytes,
never from its URL. Pure: bytes in, extension out.
"""

from __future__ import annotations

from typing import Final

SNIFF_BYTES: Final = 12
"""How many leading bytes ``sniff_image_ext`` needs to tell every format apart."""


def sniff_image_ext(data: bytes) -> str | None:
    """The extension (no dot) of the image container ``data`` starts with, or ``None``.

    JPEG ``FF D8 FF`` -> ``jpg``; PNG signature -> ``png``; ``RIFF....WEBP`` -> ``webp``;
    ``GIF87a`` / ``GIF89a`` -> ``gif``; ``BM`` -> ``bmp``; ``II*\\0`` / ``MM\\0*`` -> ``tif``.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tif"
    return None
