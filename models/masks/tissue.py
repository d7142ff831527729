"""Where a proposed lesion may lie: the allowed area of an image (docs/DESIGN.md, "Mask proposals").

The rule, simple on purpose:

1. With a region-of-interest mask (a manifest's ``roi_mask_path``, a request's ``roi_mask``), the ROI is
   the candidate area: the person who drew it knows where lesions occur.
2. Otherwise the imaged tissue: everything but the frame and glare. The frame is the dark region
   connected to the image border, dark meaning a luminance (ITU-R 601), after a Gaussian blur of 1% of
   the shorter side, below ``DARK_FRACTION`` of the image's 95th-percentile luminance: the black border of
   an endoscopy frame and the dark vignette of a dermoscopy image, at any exposure. Dark areas enclosed
   by tissue (a pigmented nevus, a shadow) are not the frame and stay allowed. Glare is specular glare:
   every channel >= ``GLARE_LEVEL`` (near-white and colourless; pale or overexposed skin keeps some
   colour and stays tissue: a saturation rule, max >= 230 with (max - min) / max <= 0.2, took up to 47% of
   PH2 images' skin for glare).
3. The candidate area is eroded by a margin (``MARGIN`` of the shorter side, at least 2 px, a square
   window), with everything outside the image counted as forbidden, so a shape inside the allowed area
   stays that far from the image border, the frame, glare and the ROI's edge.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

DARK_FRACTION = 0.35
GLARE_LEVEL = 235
MARGIN = 0.03
BLUR = 0.01


def margin_px(height: int, width: int) -> int:
    return max(2, round(MARGIN * min(height, width)))


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: imaged tissue of an (H, W, 3) uint8 image (rule 2 of the module docstring)."""
    rgb = image.astype(np.float32)
    luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    radius = max(1.0, BLUR * min(image.shape[:2]))
    grey = Image.fromarray(np.clip(luminance, 0, 255).astype(np.uint8))
    blurred = np.asarray(grey.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    bright = float(np.percentile(luminance, 95))
    dark = blurred < max(DARK_FRACTION * bright, 1.0)
    labels, _ = ndimage.label(dark)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    frame = np.isin(labels, np.unique(edge[edge > 0]))
    glare = rgb.min(axis=2) >= GLARE_LEVEL
    return ~frame & ~glare


def erode(area: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose (2 margin + 1)^2 window lies entirely inside ``area`` (outside the image counts as
    outside), via an integral image: the cost does not grow with the margin."""
    h, w = area.shape
    k = 2 * margin + 1
    outside = np.pad(~area, margin, constant_values=True).astype(np.int32)
    integral = np.zeros((h + 2 * margin + 1, w + 2 * margin + 1), dtype=np.int32)
    integral[1:, 1:] = outside.cumsum(0).cumsum(1)
    window = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return window == 0


def allowed_area(image: np.ndarray, roi: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: where every pixel of a proposed mask must lie (the module's rule)."""
    h, w = image.shape[:2]
    candidate = roi.astype(bool) if roi is not None else tissue_mask(image)
    return erode(candidate, margin_px(h, w))
