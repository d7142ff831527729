"""Safe image and mask decoding.

Images arrive from users (CLI files, REST/gRPC bytes). Before any pixel is decoded we read the header
and refuse images over a pixel limit (a 1 kB PNG can declare 100k x 100k pixels), under a minimum side
(the services pass one: a 1x1 PNG is not a picture of skin) or in a pixel format we do not convert
faithfully, then decode fully so a truncated file fails here and not halfway through a UNet batch.

Pixel formats (one rule for images and masks): 8 bits or fewer per channel, Pillow modes 1, L, LA, P, PA,
RGB, RGBA. Grey (1, L) is repeated into R, G and B; a palette (P) becomes its RGB colours; alpha (LA, PA,
RGBA, P with transparency) is composited on black. Everything else is refused with its mode named:
16 bits per channel (PNG, TIFF), 32-bit integer (I) and float (F) TIFFs, CMYK, YCbCr, LAB, ... Pillow
would otherwise clip or truncate them silently (a 16-bit grey PNG becomes mostly white).

Conventions used everywhere in lesionsynth:
  image: ``np.ndarray`` of shape (H, W, 3), dtype uint8, RGB (grayscale and RGBA are converted).
  mask:  ``np.ndarray`` of shape (H, W), dtype bool; a source pixel > 127 is inside.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import ConfigError, InvalidImageError, InvalidMaskError

if TYPE_CHECKING:
    from models.provenance import Provenance

#: Default pixel limit (width * height): 40 megapixels, above any dermoscope or colposcope frame we know.
#: Overridable per call and by ``LESIONSYNTH_MAX_PIXELS`` (parsed by :func:`max_pixels_from_env` only).
DEFAULT_MAX_PIXELS = 40_000_000
#: The services' default smallest accepted side (``LESIONSYNTH_MIN_IMAGE_SIDE``); the library's is 1.
DEFAULT_MIN_SIDE = 32
#: Pillow modes we decode (8 bits or fewer per channel); the conversion rule is in the module docstring.
ACCEPTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
#: What a refused mode is, for the message.
MODE_NAMES = {
    "I;16": "16-bit grey",
    "I;16B": "16-bit grey",
    "I;16L": "16-bit grey",
    "I;16N": "16-bit grey",
    "I": "32-bit integer",
    "F": "32-bit float",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "CIELAB",
    "HSV": "HSV",
}
#: Formats we decode. Anything else (SVG, PDF, EPS, ...) is refused before a decoder runs. DICOM (bytes
#: with "DICM" at offset 128) is decoded by models/data/dicom.py (pydicom), the others by Pillow.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "DICOM")
PILLOW_FORMATS = tuple(f for f in ALLOWED_FORMATS if f != "DICOM")

# PIL's own bomb check (warn at ~89 MP, raise at 2x) would pre-empt our configurable limit with a less
# helpful message; we check width * height from the header ourselves before any decode, so turn it off.
Image.MAX_IMAGE_PIXELS = None


def max_pixels_from_env() -> int:
    """The one parser of ``LESIONSYNTH_MAX_PIXELS``: the library default here, the services' settings
    (services/common/settings.py) call it once at start and pass the limit down."""
    raw = os.environ.get("LESIONSYNTH_MAX_PIXELS")
    if raw is None or raw == "":
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"LESIONSYNTH_MAX_PIXELS must be an integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"LESIONSYNTH_MAX_PIXELS must be >= 1, got {value}")
    return value


#: A decoder raw mode with 16 or 32 bits per channel (PNG ``RGB;16B``, TIFF ``RGB;16L``); not BMP's
#: ``BGR;16``, which is 16 bits per pixel (5-6-5), decoded faithfully.
WIDE_RAW_MODE = re.compile(r"^(L|LA|RGB|RGBA|RGBX|RGBa|I|F);(16|32)")


def _raw_modes(img: Image.Image) -> list[str]:
    """The decoder's raw modes from the header (e.g. ``RGB;16B``: Pillow would truncate to 8 bits)."""
    modes = []
    for tile in img.tile:
        args = tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            modes.append(raw)
    return modes


def check_pixel_format(img: Image.Image, role: str, error: type[Exception] = InvalidImageError) -> None:
    """Refuse what :data:`ACCEPTED_MODES` does not name, and 16-bit data Pillow would show as 8-bit."""
    accepted = f"send 8-bit grey, palette, RGB or RGBA (modes {', '.join(ACCEPTED_MODES)})"
    if img.mode not in ACCEPTED_MODES:
        name = MODE_NAMES.get(img.mode, "an unsupported pixel format")
        raise error(f"{role}: mode {img.mode} ({name}) is not accepted: {accepted}")
    wide = [raw for raw in _raw_modes(img) if WIDE_RAW_MODE.match(raw)]
    if wide:
        raise error(
            f"{role}: mode {img.mode} with 16 bits per channel ({wide[0]}) is not accepted: {accepted}"
        )


def check_size(width: int, height: int, role: str, limit: int, min_side: int = 1) -> None:
    """The size rules of every format, read from the header before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{role}: has zero size")
    if width * height > limit:
        raise InvalidImageError(
            f"{role}: {width}x{height} = {width * height:,} pixels is over the limit of {limit:,} pixels"
        )
    if min(width, height) < min_side:
        raise InvalidImageError(
            f"{role}: {width}x{height} is under the minimum of {min_side} pixels per side "
            "(LESIONSYNTH_MIN_IMAGE_SIDE)"
        )


def _dicom(data: bytes | Path):
    """models.data.dicom when ``data`` is DICOM (its module imports pydicom only when used), else None."""
    from models.data import dicom

    return dicom if dicom.is_dicom(data) else None


def _open(
    data: bytes | Path,
    role: str,
    max_pixels: int | None,
    min_side: int = 1,
    format_error: type[Exception] = InvalidImageError,
) -> Image.Image:
    limit = max_pixels or max_pixels_from_env()
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else Path(data)
    if isinstance(source, Path) and not source.is_file():
        raise InvalidImageError(f"{role}: file not found")
    try:
        img = Image.open(source, formats=PILLOW_FORMATS)
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"{role}: not a supported image (expected one of {', '.join(ALLOWED_FORMATS)})"
        ) from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"{role}: cannot be read as an image ({type(exc).__name__})") from exc
    check_size(*img.size, role, limit, min_side)
    check_pixel_format(img, role, format_error)
    try:
        img.load()  # full decode: a truncated file raises here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"{role}: image data is truncated or corrupt ({type(exc).__name__})") from exc
    return img


def decode_image(
    data: bytes | Path, *, max_pixels: int | None = None, min_side: int = 1, role: str = "image"
) -> np.ndarray:
    """Decode bytes or a file into an RGB uint8 array of shape (H, W, 3) (the module's format rule; DICOM:
    models/data/dicom.py's rule)."""
    if dicom := _dicom(data):
        return dicom.decode_dicom_image(
            data, max_pixels=max_pixels or max_pixels_from_env(), min_side=min_side, role=role
        )
    img = _open(data, role, max_pixels, min_side)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black rather than dropping alpha blindly: transparent pixels become background.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    # One copy into a writable array (convert("RGB") of an RGB image and asarray(...).copy() made two more;
    # issue 14 profile, docs/PERFORMANCE.md).
    return np.array(img, dtype=np.uint8)


def decode_mask(
    data: bytes | Path, *, max_pixels: int | None = None, min_side: int = 1, role: str = "mask"
) -> np.ndarray:
    """Decode an 8-bit image (the module's format rule) into a boolean mask of shape (H, W): a pixel > 127
    is inside. Colour masks are converted to luminance first; an alpha channel is ignored. DICOM: a SEG
    (the union of its segments) or an image (models/data/dicom.py).
    """
    if dicom := _dicom(data):
        return dicom.decode_dicom_mask(
            data, max_pixels=max_pixels or max_pixels_from_env(), min_side=min_side, role=role
        )
    img = _open(data, role, max_pixels, min_side, format_error=InvalidMaskError)
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


#: zlib level of every PNG we write. Level 1, not Pillow's 6: a synthetic image is encoded on every
#: synthesis request, and on 256 px ISIC 2017 photographs level 6 took 48.5 ms per image against 12.5 ms
#: for 17% more bytes (74.4 vs 63.7 KB; median of 20, busy 2-core machine, issue 14): at a 10-step
#: sampler that was a fifth of a request. Pixels are the same at every level (PNG is lossless).
PNG_COMPRESS_LEVEL = 1


def encode_png(image: np.ndarray, provenance: Provenance | None = None) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 array as PNG bytes (zlib level :data:`PNG_COMPRESS_LEVEL`); a
    synthetic image passes its ``provenance`` (models/provenance.py), saved as PNG text chunks."""
    buf = io.BytesIO()
    extra = {} if provenance is None else {"pnginfo": provenance.png_info()}
    Image.fromarray(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **extra)
    return buf.getvalue()
