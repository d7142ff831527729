"""A small lesion-vs-normal classifier on region crops, trained here, used as the KID feature network.

Paper 001 judges synthetic images by KID on features that know what matters clinically. Nothing can be
downloaded here (no Inception weights), and random-init features barely separate image distributions
(see :mod:`models.evaluation.features`), so the fidelity figures use a ResNet-18 (torchvision,
``weights=None``) trained for a few epochs to tell real lesion crops from real normal crops of the
``train`` split. Its penultimate 512-d features then measure "how lesion-like" a synthetic crop looks in
the directions that separate the classes.

Shapes: crops (N, 3, R, R) float32 in [-1, 1]; labels (N,) int64 in {0, 1} (1 = lesion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from models.diffusion.crops import augment_batch
from models.evaluation.features import resnet_pooled
from models.progress import tqdm


def train_crop_classifier(
    crops: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ResNet-18 (2 classes, class-balanced loss, dihedral + colour augmentation); return it in eval
    mode. :func:`crop_features` reads its penultimate (N, 512) features, :func:`lesion_probability` its
    P(lesion)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = resnet18(weights=None, num_classes=2)
    counts = torch.bincount(labels, minlength=2).float().clamp(min=1)
    weight = counts.sum() / (2 * counts)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    steps_per_epoch = max(1, len(crops) // batch_size)
    net.train()
    for _ in tqdm(range(epochs), desc="feature classifier", unit="epoch", disable=not progress):
        order = torch.randperm(len(crops), generator=g)
        for k in range(steps_per_epoch):
            idx = order[k * batch_size : (k + 1) * batch_size]
            x, _ = augment_batch(crops[idx].clone(), torch.zeros(len(idx), 1, *crops.shape[-2:]), g)
            loss = F.cross_entropy(net(x), labels[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def _run(net: nn.Module, crops: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    features, logits = resnet_pooled(
        net, (crops[i : i + batch_size] for i in range(0, len(crops), batch_size))
    )
    return features, logits.softmax(-1)[:, 1].double()


def crop_features(net: nn.Module, crops: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1] -> (N, 512) float64 penultimate features."""
    return _run(net, crops, batch_size)[0]


def lesion_probability(net: nn.Module, crops: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1] -> (N,) float64 P(lesion) of the crop classifier."""
    return _run(net, crops, batch_size)[1]
