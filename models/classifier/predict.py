"""Score images with a trained classifier: probabilities of the positive class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.classifier.data import preprocess
from models.classifier.folder import LoadedClassifier
from models.data.images import decode_image
from models.data.manifest import Row


@torch.inference_mode()
def predict_images(model: LoadedClassifier, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """RGB uint8 images (H, W, 3) of any sizes -> (N,) float64 P(positive)."""
    device = next(model.net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i : i + batch_size], model.config).to(device)
        out.append(torch.sigmoid(model.net(x).float().flatten()).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def predict_rows(model: LoadedClassifier, rows: Sequence[Row], batch_size: int = 32) -> np.ndarray:
    images = [decode_image(r.image_file, role=f"row {r.number} image") for r in rows]
    return predict_images(model, images, batch_size)
