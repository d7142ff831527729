"""Image -> feature-vector embeddings for KID and t-SNE, without downloaded weights.

KID and t-SNE compare images in a feature space. The papers use Inception-v3 features, but lesionsynth
cannot download pretrained weights, so :class:`FeatureExtractor` offers two kinds of features:

* **A trained network you pass in (preferred).** Any ``torch.nn.Module`` mapping a (N, 3, S, S) batch
  in [-1, 1] to (N, D) or (N, C, h, w) outputs, e.g. the lesion classifier trained later in the project.
  Features of a network trained on the same kind of images are the most meaningful.
* **Random-init ResNet-18 (documented fallback).** ``torchvision.models.resnet18(weights=None)`` with
  weights drawn from a fixed seed, the ``fc`` layer removed, giving 512-d global-average-pooled features.
  Random convolutional embeddings still separate image distributions (colour, texture, structure) and
  are a recognised option for distribution metrics: Naeem et al. 2020, "Reliable Fidelity and Diversity
  Metrics for Generative Models" (ICML) evaluate metrics on randomly initialised embeddings. They are
  less semantic than trained features, so always report :attr:`FeatureExtractor.name` with a KID value:
  numbers from different extractors (or seeds, or image sizes) are not comparable.

Images are resized to a square ``image_size`` with antialiased bilinear interpolation (aspect ratio is
not kept) and mapped from uint8 [0, 255] to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = ["FeatureExtractor"]


def random_resnet18(seed: int = 0) -> nn.Module:
    """ResNet-18 with seeded random weights and ``fc`` replaced by identity: (N, 3, S, S) -> (N, 512).

    The weights are drawn inside ``torch.random.fork_rng`` so the caller's global RNG state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


class FeatureExtractor:
    """Turn uint8 RGB images into float64 feature vectors.

    Args:
        backbone: a network mapping (N, 3, image_size, image_size) float32 in [-1, 1] to (N, D) or
            (N, C, h, w) (the latter is global-average-pooled to (N, C)). It is switched to eval mode and
            moved to ``device`` in place. ``None`` means a random-init ResNet-18 seeded with ``seed``.
        image_size: side length S every image is resized to.
        seed: seed of the random-init weights (ignored when ``backbone`` is given).
        device: torch device for the forward pass.
        batch_size: images per forward pass.
        name: label recorded in reports; default describes the features, e.g.
            ``"resnet18-random-init-seed0@64px"``.

    Call with a uint8 array (N, H, W, 3) or a list of (H, W, 3) / (H, W) uint8 arrays of any sizes;
    returns a float64 numpy array (N, D).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        *,
        image_size: int = 64,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        if int(image_size) < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        if backbone is None:
            self.backbone: nn.Module = random_resnet18(self.seed)
            default_name = f"resnet18-random-init-seed{self.seed}@{self.image_size}px"
        elif isinstance(backbone, nn.Module):
            self.backbone = backbone
            default_name = f"{type(backbone).__name__}-custom@{self.image_size}px"
        else:
            raise TypeError(f"backbone must be a torch.nn.Module or None, got {type(backbone).__name__}")
        self.backbone.eval().to(self.device)
        self.name: str = name or default_name

    def __repr__(self) -> str:
        return f"FeatureExtractor(name={self.name!r}, device={str(self.device)!r})"

    @staticmethod
    def _check_image(image: np.ndarray, index: int) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image {index} must be a numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"image {index} must be uint8 RGB (0..255), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {index} must have shape (H, W, 3) or (H, W), got {image.shape}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image {index} is empty (shape {image.shape})")
        return image

    def _to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images -> (B, 3, S, S) float32 in [-1, 1] on ``self.device``."""
        resized = []
        for img in images:
            t = torch.from_numpy(np.ascontiguousarray(img)).to(self.device)
            t = t.permute(2, 0, 1)[None].float() / 127.5 - 1.0
            if t.shape[-2:] != (self.image_size, self.image_size):
                t = F.interpolate(
                    t,
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            resized.append(t)
        return torch.cat(resized).clamp_(-1.0, 1.0)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.backbone(batch)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"backbone returned {type(out).__name__}, expected a tensor")
        if out.ndim == 4:  # (N, C, h, w) feature map -> global average pool
            out = out.mean(dim=(2, 3))
        return out.reshape(out.shape[0], -1)

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Features of ``images``: (N, H, W, 3) uint8 array or list of uint8 images -> (N, D) float64."""
        if isinstance(images, np.ndarray):
            if images.ndim not in (3, 4):
                raise ValueError(f"images array must be (N, H, W, 3) or (N, H, W), got shape {images.shape}")
            images = list(images)
        items = [self._check_image(img, i) for i, img in enumerate(images)]
        if not items:
            raise ValueError("no images given to the feature extractor")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                batch = self._to_batch(items[start : start + self.batch_size])
                chunks.append(self._forward(batch).double().cpu())
        feats = torch.cat(chunks).numpy()
        if not np.isfinite(feats).all():
            raise ValueError(f"feature extractor {self.name!r} produced NaN or inf features")
        return feats


@torch.inference_mode()
def resnet_pooled(net: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a torchvision ResNet over an iterable of input batches (B, 3, H, W); return its penultimate
    (global-average-pooled) features (N, D) float64 and its outputs (N, ...) , both on the CPU."""
    pooled: list[torch.Tensor] = []
    handle = net.avgpool.register_forward_hook(
        lambda _m, _i, out: pooled.append(out.flatten(1).double().cpu())
    )
    try:
        outputs = [net(batch).float().cpu() for batch in batches]
    finally:
        handle.remove()
    return torch.cat(pooled), torch.cat(outputs)
