"""Paste a generated region back into its image with a feathered seam.

The guarantee the services and tests rely on: every pixel outside :func:`editable_region` (the mask
dilated by the feather width, clipped to the region box) is bit-identical to the input. Inside the mask
the generated pixels are used as they are; between the mask and the edge of the dilation the two are
blended with a smooth alpha so there is no visible cut.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models.data.regions import SquareBox, crop_square

#: Feather width as a fraction of the region box's side.
FEATHER_FRACTION = 0.06


def feather_width(box: SquareBox, fraction: float = FEATHER_FRACTION) -> int:
    """Feather width in pixels: a fraction of the region's side, at least 1 px."""
    return max(1, int(round(box.side * fraction)))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def crop_alpha(mask_crop: np.ndarray, feather_px: int) -> np.ndarray:
    """Blend weight (S, S) float32 in [0, 1] for a mask crop (S, S) bool.

    1 inside the mask, smoothly falling to exactly 0 at ``feather_px`` outside it (a Gaussian of the mask
    dilated by half the width, multiplied by the full-width dilation so the support is hard-bounded).
    """
    support = ndimage.binary_dilation(mask_crop, structure=_disk(feather_px))
    core = ndimage.binary_dilation(mask_crop, structure=_disk(max(feather_px // 2, 1)))
    soft = ndimage.gaussian_filter(core.astype(np.float32), sigma=max(feather_px / 3.0, 0.5))
    alpha = np.where(mask_crop, 1.0, np.clip(soft, 0.0, 1.0)) * support
    return alpha.astype(np.float32)


def editable_region(mask: np.ndarray, box: SquareBox, feather_px: int) -> np.ndarray:
    """(H, W) bool: the only pixels :func:`paste_region` may change."""
    h, w = mask.shape
    alpha = crop_alpha(crop_square(mask, box), feather_px)
    region = np.zeros((h, w), dtype=bool)
    rows, cols, crows, ccols = box.clipped(h, w)
    region[rows, cols] = alpha[crows, ccols] > 0
    return region


def paste_region(
    image: np.ndarray, mask: np.ndarray, box: SquareBox, generated: np.ndarray, feather_px: int
) -> np.ndarray:
    """Blend ``generated`` (S, S, 3) float in [0, 255], covering ``box``, into ``image`` (H, W, 3) uint8."""
    h, w = mask.shape
    alpha = crop_alpha(crop_square(mask, box), feather_px)
    rows, cols, crows, ccols = box.clipped(h, w)
    a = alpha[crows, ccols][..., None]
    original = image[rows, cols].astype(np.float32)
    blended = np.clip(np.rint(a * generated[crows, ccols] + (1.0 - a) * original), 0, 255).astype(np.uint8)
    out = image.copy()
    # Where alpha is exactly 0 keep the original byte for byte (no float round trip at all).
    out[rows, cols] = np.where(a > 0, blended, image[rows, cols])
    return out
