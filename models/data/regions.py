"""The lesion region: the mask's bounding box with a margin, made square.

Training (paper 000, Methods/Diffusion: "the annotated parts were extracted") and inpainting use the same
geometry, so the UNet sees at inference the kind of crop it saw in training: the lesion centred, filling
the box up to a margin of surrounding tissue.

A square box near the border can extend past the image; crops are then padded by edge replication and
only the in-image part is ever pasted back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: Margin around the mask's bounding box, as a fraction of the box's longer side.
DEFAULT_MARGIN = 0.15


@dataclass(frozen=True)
class SquareBox:
    """A square region ``[top, top + side) x [left, left + side)`` in image coordinates (may exceed it)."""

    top: int
    left: int
    side: int

    def clipped(self, height: int, width: int) -> tuple[slice, slice, slice, slice]:
        """(image rows, image cols, crop rows, crop cols) slices of the part inside an HxW image."""
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1, x1 = min(self.top + self.side, height), min(self.left + self.side, width)
        return (
            slice(y0, y1),
            slice(x0, x1),
            slice(y0 - self.top, y1 - self.top),
            slice(x0 - self.left, x1 - self.left),
        )


def region_box(mask: np.ndarray, margin: float = DEFAULT_MARGIN, min_side: int = 8) -> SquareBox:
    """Square box around ``mask`` (H, W) bool: bbox side * (1 + 2 * margin), centred on the bbox."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask has no region")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(int(np.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin))), min_side)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    return SquareBox(top=int(np.floor(cy - side / 2)), left=int(np.floor(cx - side / 2)), side=side)


def crop_square(array: np.ndarray, box: SquareBox) -> np.ndarray:
    """Crop ``box`` from an (H, W[, C]) array, replicating edge pixels where the box leaves the image."""
    h, w = array.shape[:2]
    pad_top, pad_left = max(-box.top, 0), max(-box.left, 0)
    pad_bottom = max(box.top + box.side - h, 0)
    pad_right = max(box.left + box.side - w, 0)
    if pad_top or pad_left or pad_bottom or pad_right:
        pad = [(pad_top, pad_bottom), (pad_left, pad_right)] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, pad, mode="edge")
    top, left = box.top + pad_top, box.left + pad_left
    return array[top : top + box.side, left : left + box.side]


def resize_image(crop: np.ndarray, size: int) -> torch.Tensor:
    """(S, S, 3) uint8 -> (3, size, size) float32 in [-1, 1] (antialiased bilinear)."""
    import torch  # here, not at the top: the geometry above is torch-free (the services use it)
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].clamp(-1.0, 1.0)


def resize_mask(crop: np.ndarray, size: int) -> torch.Tensor:
    """(S, S) bool -> (1, size, size) float32 in {0, 1} (area average, then > 0.5)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(crop)).float()[None, None]
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="area")
    return (t[0] > 0.5).float()


def lesion_crop(image: np.ndarray, mask: np.ndarray, size: int, margin: float = DEFAULT_MARGIN):
    """The training sample of one lesion image: (image (3, s, s) in [-1, 1], mask (1, s, s), box)."""
    box = region_box(mask, margin)
    return resize_image(crop_square(image, box), size), resize_mask(crop_square(mask, box), size), box
