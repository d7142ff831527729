"""Export a trained classifier to ONNX with a dynamic batch, checked against torch before it is kept.

The graph takes ``image`` (N, 3, S, S) float32, preprocessed as the model card says, and returns
``probability`` (N, 1) float32 = sigmoid(logit) of the positive class, so clients (embedded ONNX Runtime,
Triton) need no model code. At export, ONNX Runtime's output is compared with torch's on random inputs
at two batch sizes; above ``atol`` (1e-4) the export fails and no file is left behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.artifacts import atomic_write_json, sha256_file
from models.classifier.folder import load_classifier
from models.errors import LesionsynthError
from models.export.graph import INPUT_NAME, OUTPUT_NAME

OPSET = 20


class ExportError(LesionsynthError):
    """The exported graph does not reproduce the torch model."""


class ProbabilityHead(nn.Module):
    """The classifier with its sigmoid: (N, 3, S, S) -> (N, 1) probabilities."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def check_parity(onnx_path: Path, module: nn.Module, image_size: int, atol: float, seed: int = 0) -> float:
    """Max |onnxruntime - torch| over random inputs at batch 1 and 3; raise ExportError above atol."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in (1, 3):
        x = torch.randn(batch, 3, image_size, image_size, generator=g)
        with torch.inference_mode():
            expected = module(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != torch {expected.shape} at batch {batch}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > atol:
        raise ExportError(f"ONNX output differs from torch by {worst:.2e} > {atol:.0e}; export refused")
    return worst


def export_onnx(model_dir: str | Path, out: str | Path, atol: float = 1e-4) -> dict:
    """Write ``out`` (ONNX) and ``out`` + ``.json`` (its model card); return the card."""
    out = Path(out)
    loaded = load_classifier(model_dir)
    module = ProbabilityHead(loaded.net.cpu().eval()).eval()
    size = loaded.config.image_size
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, size, size),),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            # The argument of ProbabilityHead.forward is named like the graph input.
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=OPSET,
            external_data=False,
        )
        max_diff = check_parity(tmp, module, size, atol)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    pre = loaded.config.preprocessing()
    card = {
        "kind": "lesionsynth.classifier.onnx",
        "source_model_version": loaded.model_version,
        "positive_label": loaded.card["positive_label"],
        "threshold": loaded.threshold,
        "threshold_rule": loaded.card["threshold_rule"],
        "preprocessing": {**pre, "output_name": OUTPUT_NAME, "output": "(N, 1) float32 P(positive)"},
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, size, size]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", 1]},
        "opset": OPSET,
        "parity_max_abs_diff": max_diff,
        "parity_atol": atol,
        "sha256": sha256_file(out),
    }
    atomic_write_json(out.with_name(out.name + ".json"), card)
    return card
