"""propose_mask: a real lesion shape, placed where a lesion may occur (docs/DESIGN.md, "Mask proposals").

A seeded generator draws, per attempt: a bank shape, a rotation (a free angle), a horizontal flip and a
relative size uniform in the bank's size range (sqrt(mask area / image area), the class's 5th-95th
percentile; after failed attempts the upper bound falls towards the range's low end); the shape is resized so its area matches, and a position is drawn among the allowed
pixels (models/masks/tissue.py) until the whole shape lies inside the allowed area; when 40 draws miss,
every position is checked at once (an FFT correlation of the shape with the forbidden pixels). The same image, bank,
ROI and seed give the same mask. When nothing fits, ProposalError says why.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.signal import fftconvolve

from models.errors import InvalidMaskError
from models.masks.bank import ShapeBank
from models.masks.tissue import allowed_area

SHAPE_TRIES = 48
POSITION_TRIES = 40


class ProposalError(InvalidMaskError):
    """No proposal fits the image (no tissue, or an allowed area smaller than the class's lesions)."""


def _transformed(shape: np.ndarray, angle: float, flip: bool, box_side: int) -> np.ndarray:
    """The shape rotated by ``angle`` degrees, flipped, resized to a ``box_side`` square box, cropped to
    its bounding box (bool)."""
    img = Image.fromarray(shape.astype(np.uint8) * 255)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    scale = box_side / shape.shape[0]
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    out = np.asarray(img.resize(size, Image.Resampling.BILINEAR)) > 127
    if not out.any():
        return np.ones((1, 1), dtype=bool)
    ys, xs = np.nonzero(out)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def propose_mask(image: np.ndarray, bank: ShapeBank, seed: int, roi: np.ndarray | None = None) -> np.ndarray:
    """An (H, W) bool mask for an (H, W, 3) uint8 image: a bank shape inside the allowed area.

    ``roi``: an (H, W) bool region-of-interest mask; when given, the shape lies inside it instead of the
    tissue rule's area. Raises ProposalError when no placement fits.
    """
    h, w = image.shape[:2]
    if roi is not None and roi.shape != (h, w):
        raise InvalidMaskError(f"roi mask is {roi.shape[1]}x{roi.shape[0]} but image is {w}x{h}")
    area = allowed_area(image, roi)
    where = "the region-of-interest mask" if roi is not None else "the imaged tissue"
    ys, xs = np.nonzero(area)
    if ys.size == 0:
        why = (
            "is empty or thinner than the margin" if roi is not None else "was not found (too dark or glare)"
        )
        raise ProposalError(f"no place for a lesion: {where} {why}; draw a mask by hand or give an ROI")
    rng = np.random.default_rng([int(seed), 0x6D61736B])
    lo, hi = bank.size_range
    fractions = bank.shapes.reshape(len(bank), -1).mean(axis=1)
    for attempt in range(SHAPE_TRIES):
        i = int(rng.integers(len(bank)))
        angle = float(rng.uniform(0.0, 360.0))
        flip = bool(rng.random() < 0.5)
        # the whole range first; where large lesions do not fit, the upper bound falls to the range's low
        # end by half-way (PH2's melanomas span 0.44-0.97 of the side: the top of that rarely fits)
        upper = hi - (hi - lo) * min(1.0, attempt / (SHAPE_TRIES / 2))
        size = float(rng.uniform(lo, upper))
        # area of the shape at box side L is fraction * L^2 (before rotation); match size^2 * H * W
        box_side = max(3, round(size * np.sqrt(h * w / max(fractions[i], 1e-6))))
        shape = _transformed(bank.shapes[i], angle, flip, box_side)
        sh, sw = shape.shape
        if sh >= h or sw >= w:
            continue
        place = None
        for _ in range(POSITION_TRIES):  # cheap draws centred on allowed pixels first
            k = int(rng.integers(ys.size))
            top, left = int(ys[k]) - sh // 2, int(xs[k]) - sw // 2
            if top < 1 or left < 1 or top + sh > h - 1 or left + sw > w - 1:
                continue
            if area[top : top + sh, left : left + sw][shape].all():
                place = top, left
                break
        if place is None:  # then every position at once: where no shape pixel meets a forbidden one
            hits = fftconvolve((~area).astype(np.float32), shape[::-1, ::-1].astype(np.float32), mode="valid")
            tops, lefts = np.nonzero(hits < 0.5)
            if tops.size:
                k = int(rng.integers(tops.size))
                place = int(tops[k]), int(lefts[k])
        if place is not None:
            top, left = place
            mask = np.zeros((h, w), dtype=bool)
            mask[top : top + sh, left : left + sw] = shape
            return mask
    share = 100.0 * ys.size / (h * w)
    raise ProposalError(
        f"no placement fits: the allowed area ({where}, away from the border) is {share:.1f}% of the image "
        f"and no lesion shape of the class's size range ({lo:.3f}-{hi:.3f} of the image side) fits inside it; "
        "give a larger region-of-interest mask or draw a mask by hand"
    )
