"""Classifier images in memory and their augmentation.

Medical screening sets here are small (hundreds to a few thousand images), so the rows a run needs are
decoded once, resized to ``image_size`` and kept as uint8 (N, 3, S, S): 150 kB per image at 224 px.
All randomness comes from a caller-owned ``torch.Generator`` (saved in checkpoints, so resume is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.classifier.config import ClassifierConfig, normalize
from models.data.augment import colour_jitter
from models.data.images import decode_image
from models.data.manifest import Row
from models.progress import tqdm


def resize_uint8(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8, bilinear with antialias (the documented preprocessing)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].round().clamp(0, 255).to(torch.uint8)


def preprocess(images: Sequence[np.ndarray], config: ClassifierConfig) -> torch.Tensor:
    """RGB uint8 images of any size -> (N, 3, S, S) float32 network input (what ONNX clients must do)."""
    batch = torch.stack([resize_uint8(img, config.image_size) for img in images]).float() / 255.0
    return normalize(batch, config)


class ImageTable:
    """Decoded, resized images of some manifest rows.

    Attributes:
        images: (N, 3, S, S) uint8.
        labels: (N,) float32, 1.0 for the positive label.
        synthetic: (N,) bool, rows with ``synthetic == "1"``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, synthetic: torch.Tensor, rows: list[int]):
        self.images, self.labels, self.synthetic, self.rows = images, labels, synthetic, rows

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Row],
        positive_label: str,
        image_size: int,
        progress: bool = False,
        desc: str = "images",
    ) -> ImageTable:
        images = [
            resize_uint8(decode_image(r.image_file, role=f"row {r.number} image"), image_size)
            for r in tqdm(rows, desc=f"loading {desc}", unit="img", disable=not progress)
        ]
        return cls(
            torch.stack(images) if images else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8),
            torch.tensor([float(r.label == positive_label) for r in rows]),
            torch.tensor([r.fields.get("synthetic", "0") == "1" for r in rows], dtype=torch.bool),
            [r.number for r in rows],
        )

    def batch(
        self, idx: torch.Tensor, config: ClassifierConfig, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images (B, 3, S, S) float32, labels (B,)); augmented when a generator is given."""
        x = self.images[idx].float() / 255.0
        if generator is not None:
            x = augment(x, generator)
        return normalize(x, config), self.labels[idx]


def augment(x: torch.Tensor, generator: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    """Standard augmentation for dermoscopy/colposcopy screening, per sample: random resized crop
    (75-100% of the side, random position), the dihedral group (flips and 90-degree rotations: lesions have
    no canonical orientation) and colour jitter (brightness, contrast, saturation each x 1 +- ``jitter``).

    x: (B, 3, S, S) float in [0, 1] -> same shape.
    """
    b, _, s, _ = x.shape
    out = torch.empty_like(x)
    scales = 0.75 + 0.25 * torch.rand(b, generator=generator)
    offsets = torch.rand(b, 2, generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    rots = torch.randint(0, 4, (b,), generator=generator)
    for i in range(b):
        side = max(8, int(s * scales[i]))
        top, left = int(offsets[i, 0] * (s - side)), int(offsets[i, 1] * (s - side))
        crop = x[i : i + 1, :, top : top + side, left : left + side]
        img = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False)[0]
        if flips[i]:
            img = img.flip(-1)
        out[i] = torch.rot90(img, int(rots[i]), (-2, -1))
    return colour_jitter(out, generator, jitter)
