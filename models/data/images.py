"""Safe image and mask decoding.

Images arrive from users (CLI files, REST/gRPC bytes). Before any pixel is decoded we read the header
and refuse images over a pixel limit (a 1 kB PNG can declare 100k x 100k pixels), then decode fully so a
truncated file fails here and not halfway through a UNet batch.

Conventions used everywhere in lesionsynth:
  image: ``np.ndarray`` of shape (H, W, 3), dtype uint8, RGB (grayscale and RGBA are converted).
  mask:  ``np.ndarray`` of shape (H, W), dtype bool; a source pixel > 127 is inside.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import InvalidImageError, InvalidMaskError

#: Default pixel limit (width * height): 40 megapixels, above any dermoscope or colposcope frame we know.
#: Overridable per call and by ``LESIONSYNTH_MAX_PIXELS``.
DEFAULT_MAX_PIXELS = 40_000_000
#: Formats we decode. Anything else (SVG, PDF, EPS, ...) is refused before a decoder runs.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")

# PIL's own bomb check (warn at ~89 MP, raise at 2x) would pre-empt our configurable limit with a less
# helpful message; we check width * height from the header ourselves before any decode, so turn it off.
Image.MAX_IMAGE_PIXELS = None


def max_pixels_from_env() -> int:
    raw = os.environ.get("LESIONSYNTH_MAX_PIXELS")
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidImageError(f"LESIONSYNTH_MAX_PIXELS must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise InvalidImageError("LESIONSYNTH_MAX_PIXELS must be positive")
    return value


def _open(data: bytes | Path, role: str, max_pixels: int | None) -> Image.Image:
    limit = max_pixels or max_pixels_from_env()
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else Path(data)
    if isinstance(source, Path) and not source.is_file():
        raise InvalidImageError(f"{role}: file not found")
    try:
        img = Image.open(source, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"{role}: not a supported image (expected one of {', '.join(ALLOWED_FORMATS)})"
        ) from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"{role}: cannot be read as an image ({type(exc).__name__})") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{role}: has zero size")
    if width * height > limit:
        raise InvalidImageError(
            f"{role}: {width}x{height} = {width * height:,} pixels is over the limit of {limit:,} pixels"
        )
    try:
        img.load()  # full decode: a truncated file raises here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"{role}: image data is truncated or corrupt ({type(exc).__name__})") from exc
    return img


def decode_image(data: bytes | Path, *, max_pixels: int | None = None, role: str = "image") -> np.ndarray:
    """Decode bytes or a file into an RGB uint8 array of shape (H, W, 3)."""
    img = _open(data, role, max_pixels)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black rather than dropping alpha blindly: transparent pixels become background.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def decode_mask(data: bytes | Path, *, max_pixels: int | None = None, role: str = "mask") -> np.ndarray:
    """Decode any 8-bit image into a boolean mask of shape (H, W): a pixel > 127 is inside.

    Colour masks are converted to luminance first; an alpha channel is ignored.
    """
    img = _open(data, role, max_pixels)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise InvalidMaskError(f"{role}: must be an 8-bit image, got mode {img.mode}")
    return np.asarray(img.convert("L"), dtype=np.uint8) > 127


def check_pair(image: np.ndarray, mask: np.ndarray, *, role: str = "") -> None:
    """Raise :class:`InvalidMaskError` unless ``mask`` is a non-empty (H, W) bool mask of ``image``."""
    prefix = f"{role}: " if role else ""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidImageError(f"{prefix}image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise InvalidMaskError(
            f"{prefix}mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}; they must be the same size"
        )
    if not mask.any():
        raise InvalidMaskError(f"{prefix}mask is empty (no pixel > 127): nothing to paint into")


def encode_png(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
