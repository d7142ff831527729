"""Photometric augmentation shared by the synthesizer and classifier recipes."""

from __future__ import annotations

import torch


def colour_jitter(img: torch.Tensor, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """Per sample, scale brightness, contrast and saturation each by 1 +- ``jitter`` (uniform).

    img: (B, 3, H, W) float in [0, 1] -> same shape, clamped to [0, 1]. Draws one (3, B) block of
    uniforms from ``generator``, so callers that save the generator state resume exactly.
    """
    factors = 1 + (torch.rand(3, img.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * jitter
    img = img * factors[0]  # brightness
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * factors[1] + mean  # contrast
    gray = img.mean(dim=1, keepdim=True)
    img = (img - gray) * factors[2] + gray  # saturation
    return img.clamp(0, 1)
