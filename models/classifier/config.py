"""Classifier architecture and preprocessing, saved with the model and written into exported model cards.

Preprocessing is part of the contract: the ONNX model, the Triton backend and the services all feed
``(N, 3, image_size, image_size)`` float32 = (RGB / 255 - mean) / std, bilinear-resized with antialias.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from models.spec import check_fields, param

if TYPE_CHECKING:  # torch and torchvision load in the builders: the config is torch-free
    import torch
    from torch import nn

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: The usual ImageNet statistics. We train from scratch, so any fixed values work; these keep inputs
#: near zero-mean/unit-variance for skin and mucosa images and are what a later fine-tune would expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = param("resnet50", choices=ARCHS, help="torchvision ResNet, trained from scratch.")
    image_size: int = param(224, lo=32, hi=1024, help="Input side in pixels (images are resized to it).")
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def __post_init__(self) -> None:
        check_fields(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierConfig:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def preprocessing(self) -> dict:
        """What a client must do to an RGB image before the network (recorded in model cards)."""
        return {
            "input_name": "image",
            "layout": "NCHW",
            "dtype": "float32",
            "size": [self.image_size, self.image_size],
            "resize": "bilinear, antialiased, aspect ratio not kept",
            "scale": "RGB / 255",
            "mean": list(self.mean),
            "std": list(self.std),
            "output_name": "logit",
            "output": "one logit per image; probability of the positive class = sigmoid(logit)",
        }


def build_classifier(config: ClassifierConfig) -> nn.Module:
    """A torchvision ResNet (``weights=None``: nothing is downloaded) with a 1-logit head."""
    from torch import nn
    from torchvision import models as tv

    net = getattr(tv, config.arch)(weights=None)
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


def normalize(images: torch.Tensor, config: ClassifierConfig) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> normalised network input."""
    import torch

    mean = torch.tensor(config.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
