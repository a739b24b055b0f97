"""Image bytes to the pixels a model takes: decoded, checked and resized the same way when the data
is read and when a client sends an image to the endpoint.

    pixels = decode_image(png_bytes, size=(32, 32), channels=1)    # uint8 [32, 32, 1]
    pixels = decode_image("data:image/png;base64,iVBO...", (32, 32), 3)

A problem is a ValueError whose text names it, for a bad-row line and an HTTP 400: not an image,
an unsupported format, more channels than the model takes (an alpha channel is never dropped
silently; a grayscale image for a 3-channel model is repeated, and a color image whose pixels are
all gray is gray), or data PIL cannot read past its header (truncated or corrupt). An image that
declares more than `MAX_PIXELS` pixels (or the lower `max_pixels` a server passes) is refused from
its header, before any pixel is decoded (`ImageTooLarge`, an HTTP 413): a few hundred bytes of PNG
can declare gigabytes of pixels.

Imports only numpy and PIL: it runs in Ray Data tasks and inside the served model alike.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image

ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
"""What PIL may decode (its format names). MPO, the multi-picture JPEG of many cameras, reads as JPEG."""
_READ_AS = {"MPO": "JPEG"}
MAX_PIXELS = 40_000_000
"""The most pixels (width x height) an image may declare: above the 12-24 megapixels of a camera's
usual output, at most 160 MB once decoded (RGBA)."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
"""Files an image folder source reads (a format outside ACCEPTED_FORMATS is then a bad row that says so)."""

# Color channels and alpha of each PIL mode; CMYK, YCbCr and LAB are color images PIL converts to RGB.
_MODES = {
    "1": (1, False), "L": (1, False), "I": (1, False), "I;16": (1, False), "I;16B": (1, False),
    "I;16L": (1, False), "F": (1, False), "LA": (1, True), "La": (1, True),
    "RGB": (3, False), "RGBX": (3, False), "YCbCr": (3, False), "LAB": (3, False), "HSV": (3, False),
    "CMYK": (3, False), "RGBA": (3, True), "RGBa": (3, True), "PA": (3, True),
}


class ImageTooLarge(ValueError):  # noqa: N818 - reads as what it is: ImageTooLarge("...")
    """An image declares more pixels than allowed: MAX_PIXELS, or a server's lower limit (a
    decompression bomb, or just too big)."""


def decode_image(data: bytes | str, size: tuple[int, int], channels: int,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Returns the image as uint8 [height, width, channels], resized to `size` (height, width).
    `data` is the file's bytes, or base64 text (a `data:image/png;base64,` prefix is allowed).
    ValueError naming the problem; ImageTooLarge for an image above `max_pixels` (at most
    MAX_PIXELS: a server may allow less)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    limit = min(max_pixels, MAX_PIXELS)
    image = _open(image_bytes(data), limit)
    width, height = image.size
    if width * height > limit:
        raise ImageTooLarge(_too_large(width, height, limit))
    try:  # PIL reads the rest on first use: OSError, SyntaxError, struct.error... on bad data
        color, alpha, bands, mode = _channels(image)
        pixels = None if alpha else _pixels(image, size, color)
    except Exception as err:
        raise ValueError(f"not an image: truncated or corrupt {image.format} data ({err})") from err
    too_many = f"image has {bands} channels ({mode}); the model takes {channels}"
    if pixels is None:  # alpha: refused whatever the bands, and says why when they are few enough
        if bands <= channels:
            too_many += " without alpha (an alpha channel is never dropped: save the image without it)"
        raise ValueError(too_many)
    if pixels.shape[2] > channels:  # a color image: gray pixels (WebP has no gray mode) are gray
        if not (pixels == pixels[:, :, :1]).all():
            raise ValueError(too_many)
        pixels = pixels[:, :, :1]
    if pixels.shape[2] < channels:  # a grayscale image for a color model
        pixels = np.repeat(pixels, channels, axis=2)
    return pixels


def _pixels(image: Image.Image, size: tuple[int, int], color: int) -> np.ndarray:
    """The decoded image as uint8 [height, width, 1 or 3], resized to `size` (height, width)."""
    if image.format == "JPEG":  # let the decoder scale down by 1/2, 1/4 or 1/8 on the way
        image.draft(image.mode, (size[1], size[0]))
    if color == 1:
        image = Image.fromarray(_gray(image))
    elif image.mode != "RGB":  # (converting RGB to RGB would only copy it)
        image = image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def image_bytes(data: bytes | str) -> bytes:
    """Returns the bytes of an image given as bytes or as base64 text (optionally a data URL)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if not isinstance(data, str):
        raise ValueError(f"not an image: expected bytes or base64 text, got {type(data).__name__}")
    text = data.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError("not an image: a data URL must be base64 ('data:image/png;base64,...')")
    text = "".join(text.split())
    urlsafe = "-" in text or "_" in text
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if urlsafe else None,
                                validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("not an image: the text is not base64") from err


def _open(data: bytes, limit: int) -> Image.Image:
    """Reads the header only (PIL decodes pixels on first use); refuses a format not accepted."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own guard, in case another import raised it
    if not data:
        raise ValueError("not an image: no bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=[*ACCEPTED_FORMATS, *_READ_AS])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        declared = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(declared.group(1)) if declared else 0
        raise ImageTooLarge(f"image declares {pixels:,} pixels ({pixels / 1e6:,.1f} megapixels); the limit "
                            f"is {limit / 1e6:.3g} megapixels") from None
    except Exception:
        raise ValueError(_not_accepted(data)) from None
    image.format = _READ_AS.get(image.format, image.format)
    return image


def _not_accepted(data: bytes) -> str:
    """Names the format of data PIL reads but raylane does not take, else says it is not an image."""
    try:
        found = Image.open(io.BytesIO(data)).format
    except Exception:
        return "not an image"
    accepted = ", ".join(ACCEPTED_FORMATS)
    return f"unsupported image format {found!r}; accepted: {accepted}"


def _too_large(width: int, height: int, limit: int) -> str:
    return (f"image declares {width}x{height} pixels ({width * height / 1e6:,.1f} megapixels); the "
            f"limit is {limit / 1e6:.3g} megapixels")


def _channels(image: Image.Image) -> tuple[int, bool, int, str]:
    """Returns (color channels, has alpha, bands, mode as said to the user). A palette image is as
    gray or as colored as its palette, and has alpha when it declares a transparent entry."""
    if image.mode == "P":
        palette = np.asarray(image.getpalette("RGB") or [], dtype=np.int16).reshape(-1, 3)
        gray = bool((palette == palette[:, :1]).all())
        alpha = "transparency" in image.info
        mode = ("L" if gray else "RGB") + ("A" if alpha else "")
        return (1 if gray else 3), alpha, len(mode), f"{mode} palette"
    color, alpha = _MODES.get(image.mode, (len(image.getbands()), False))
    return color, alpha, len(image.getbands()), image.mode


def _gray(image: Image.Image) -> np.ndarray:
    """A one-channel image as uint8 [height, width]: 16- and 32-bit gray scaled to 8 bits."""
    if image.mode in ("L", "1", "P"):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    values = np.asarray(image)
    if image.mode == "F":
        return np.clip(values, 0, 255).astype(np.uint8)
    wide = np.clip(values, 0, 65535).astype(np.uint32)  # the 16-bit range, rounded to 8 bits in place:
    wide += 128                                         # 4 bytes a pixel, not float64's 8
    wide //= 257
    return wide.astype(np.uint8)
