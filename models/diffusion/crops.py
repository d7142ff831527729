"""Training data for the synthesizer: lesion crops held in memory, augmented on the fly.

Paper 000 trains the DDPM "only to recreate lesions": the samples are the annotated regions of lesion
images, extracted by :func:`models.data.regions.lesion_crop`. Medical lesion sets are small (tens to a
few hundred regions), so all crops are decoded once into one tensor and batches are drawn from it.

All randomness comes from one ``torch.Generator`` owned by the caller, so a run is reproducible from its
seed and a resumed run continues exactly where the checkpoint left off (the generator state is saved).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.data.augment import colour_jitter
from models.data.manifest import Row
from models.data.regions import lesion_crop
from models.progress import tqdm


class LesionCrops:
    """In-memory lesion crops.

    Attributes:
        images: (N, 3, R, R) float32 in [-1, 1].
        masks:  (N, 1, R, R) float32 in {0, 1}.
        rows:   manifest row numbers the crops came from (recorded in the model card).
        labels: (N,) int64 class of each crop (0 = normal, 1 = lesion); all 1 for the paper's lesion-only
            training. With both classes, :meth:`sample` draws each class with equal probability: a scarce
            site holds ~3% lesion regions, which a uniform draw would almost never show the model.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        rows: Sequence[int],
        labels: torch.Tensor | None = None,
    ):
        if images.ndim != 4 or images.shape[1] != 3 or masks.shape[0] != images.shape[0]:
            raise ValueError(f"bad crop tensors: images {tuple(images.shape)}, masks {tuple(masks.shape)}")
        self.images, self.masks, self.rows = images, masks, list(rows)
        self.labels = torch.ones(len(images), dtype=torch.long) if labels is None else labels.long()
        if self.labels.shape != (len(images),):
            raise ValueError(f"labels {tuple(self.labels.shape)} do not match {len(images)} crops")
        # Draw weights 1 / (crops of the crop's class); None for one class (uniform draws, as before).
        counts = torch.bincount(self.labels)
        self._weights = None if (counts > 0).sum() < 2 else 1.0 / counts.float()[self.labels]

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[Row],
        resolution: int,
        margin: float,
        progress: bool = False,
        labels: Sequence[int] | None = None,
    ) -> LesionCrops:
        images, masks = [], []
        for row in tqdm(rows, desc="extracting lesion regions", unit="img", disable=not progress):
            image, mask = row.load()
            img, msk, _ = lesion_crop(image, mask, resolution, margin)
            images.append(img)
            masks.append(msk)
        y = None if labels is None else torch.tensor(list(labels), dtype=torch.long)
        return cls(torch.stack(images), torch.stack(masks), [r.number for r in rows], y)

    def sample(
        self, batch_size: int, generator: torch.Generator, augment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random batch (with replacement): (images (B, 3, R, R), masks (B, 1, R, R), labels (B,)).

        One class: uniform over crops (the paper's recipe, draws unchanged). Several: class-balanced.
        """
        if self._weights is None:
            idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        else:
            idx = torch.multinomial(self._weights, batch_size, replacement=True, generator=generator)
        x, m = self.images[idx].clone(), self.masks[idx].clone()
        if augment:
            x, m = augment_batch(x, m, generator)
        return x, m, self.labels[idx].clone()


def augment_batch(
    x: torch.Tensor, m: torch.Tensor, generator: torch.Generator, jitter: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, 90-degree rotations (the dihedral group: lesions have no canonical orientation) and mild
    colour jitter (brightness, contrast, saturation each scaled by 1 +- ``jitter``), per sample.

    x: (B, 3, R, R) in [-1, 1]; m: (B, 1, R, R). Geometry is applied to both; colour to the image only.
    """
    b = x.shape[0]
    flips = torch.rand(b, generator=generator) < 0.5
    rots = torch.randint(0, 4, (b,), generator=generator)
    for i in range(b):
        dims = (-2, -1)
        if flips[i]:
            x[i], m[i] = x[i].flip(-1), m[i].flip(-1)
        k = int(rots[i])
        if k:
            x[i], m[i] = torch.rot90(x[i], k, dims), torch.rot90(m[i], k, dims)
    return colour_jitter((x + 1) / 2, generator, jitter) * 2 - 1, m
