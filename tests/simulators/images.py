"""Small, valid PNG images made on the spot, so image tests decode real files."""

from __future__ import annotations

import base64
import struct
import zlib

__all__ = ["png", "png_b64"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG: signature, IHDR, one IDAT, IEND (every CRC correct)."""
    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * height))
        + _chunk(b"IEND", b"")
    )


def png_b64(width: int, height: int, rgb: tuple[int, int, int]) -> str:
    return base64.b64encode(png(width, height, rgb)).decode()
