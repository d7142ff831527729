"""A control, not a synthesizer: paste real training lesion regions where a synthesizer would paint.

What would balancing give with a *perfect* synthesizer, one whose regions are indistinguishable from real
lesion regions? A DDPM that had memorised its training set would output exactly its training crops; this
inpainter does that: for each pair it takes one real ``train`` lesion crop (chosen and flipped/rotated by
the pair's seed) in place of the sampled crop, and everything else, the region geometry, the known-region
update outside the mask and the feathered paste, is :class:`~models.diffusion.inpaint.LesionInpainter`'s.
If even these images do not help a classifier, a better synthesizer cannot either under the same protocol;
if they do, the gap is the synthesizer's.

It has no weights; its ``model_version`` is the sha256 of the crops it pastes (rows, resolution, margin).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from models.data.manifest import Row
from models.diffusion.config import SynthesizerConfig
from models.diffusion.crops import LesionCrops
from models.diffusion.inpaint import DEFAULTS, LesionInpainter, SamplerSettings


class CopyPasteInpainter(LesionInpainter):
    """``inpaint_batch`` like LesionInpainter's, with real lesion crops instead of sampled ones."""

    def __init__(self, crops: LesionCrops, config: SynthesizerConfig, batch_size: int = 16):
        self.crops, self.config, self.batch_size = crops, config, batch_size
        self.defaults, self.unet_calls, self.device = DEFAULTS, 0, torch.device("cpu")
        digest = hashlib.sha256(f"copy-paste {config.resolution} {config.margin} {crops.rows}".encode())
        self._version = "copypaste-" + digest.hexdigest()[:12]

    @classmethod
    def from_rows(cls, rows: Sequence[Row], config: SynthesizerConfig) -> CopyPasteInpainter:
        """The crops of ``rows`` at ``config``'s resolution and margin (the geometry a synthesizer uses)."""
        return cls(LesionCrops.from_rows(rows, config.resolution, config.margin), config)

    @property
    def model_version(self) -> str:
        return self._version

    def sample_crops(
        self, x0: torch.Tensor, m: torch.Tensor, seeds: Sequence[int], settings: SamplerSettings = DEFAULTS
    ) -> torch.Tensor:
        """(B, 3, R, R): a real lesion crop per seed inside the mask m (B, 1, R, R), x0 outside it."""
        picked = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            index = int(torch.randint(0, len(self.crops), (1,), generator=g))
            crop = self.crops.images[index]
            if torch.rand(1, generator=g) < 0.5:
                crop = crop.flip(-1)
            picked.append(torch.rot90(crop, int(torch.randint(0, 4, (1,), generator=g)), (-2, -1)))
        return m * torch.stack(picked) + (1 - m) * x0
