"""Image files for the tests: any PIL image as bytes, and a decompression bomb."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def declaring(width: int, height: int) -> bytes:
    """A 1x1 grayscale PNG whose header (IHDR) is patched to declare width x height pixels: a few
    dozen bytes that would decode to width * height bytes."""
    data = bytearray(encode(Image.fromarray(np.zeros((1, 1), dtype=np.uint8))))
    at = data.index(b"IHDR")
    data[at + 4:at + 12] = struct.pack(">II", width, height)
    data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 17])))
    return bytes(data)
