"""INT8 screening graph: ONNX Runtime static quantisation (QDQ) of the serving folder's model.onnx.

Calibration reads ONLY the manifest's ``train`` rows (real rows, and synthetic rows training may use:
``models.review.keeps_row``), at most ``max_rows`` of them drawn with a fixed seed, each preprocessed
exactly as screening does (``models.classifier.screening.preprocess``: Pillow resize, the card's mean and
std). Validation and test rows never reach the calibrator, so they stay a fair check of the INT8 graph.

Settings: QDQ format, uint8 activations and int8 weights, per-channel weights, MinMax calibration. The
graph keeps float32 ``image`` in and float32 ``probability`` out, so the service, Triton and clients are
unchanged. Throughput and the AUC loss against FP32 are measured in the benchmark (issue 14), not here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.artifacts import sha256_file
from models.errors import ConfigError

SETTINGS = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "calibration_method": "MinMax",
    "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
}
CALIBRATION_BATCH = 8


def calibration_rows(manifest_path: str | Path, max_rows: int, seed: int = 0) -> tuple[list, dict]:
    """The train rows calibration may read (at most ``max_rows``, seeded draw) and a summary for the card."""
    from models.data.manifest import load_manifest
    from models.review import keeps_row

    if max_rows < 1:
        raise ConfigError("--calibration-rows must be at least 1")
    manifest = load_manifest(manifest_path)
    # rows_in refuses a manifest without a complete split column (nothing calibrates on unsplit data).
    train = [r for r in manifest.rows_in("train") if keeps_row(r.fields)]
    if not train:
        raise ConfigError(f"{manifest_path} has no train rows to calibrate on")
    picked = sorted(np.random.default_rng(seed).permutation(len(train))[: min(max_rows, len(train))])
    rows = [train[i] for i in picked]
    summary = {
        "manifest": str(manifest_path),
        "manifest_sha256": manifest.sha256(),
        "splits": sorted({r.split for r in rows}),
        "rows": len(rows),
        "train_rows_available": len(train),
        "max_rows": max_rows,
        "seed": seed,
    }
    return rows, summary


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed batches."""

    def __init__(self, batches: Sequence[np.ndarray], input_name: str):
        self._feeds = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # pragma: no cover - MinMax reads once
        raise NotImplementedError


def quantize_graph(
    fp32_graph: str | Path,
    out: str | Path,
    manifest_path: str | Path,
    preprocessing: dict,
    max_rows: int = 256,
    seed: int = 0,
) -> dict:
    """Write ``out`` (INT8 QDQ graph of ``fp32_graph``) atomically; return its card entry."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.classifier.screening import preprocess
    from models.data.images import decode_image
    from models.export.graph import INPUT_NAME

    rows, summary = calibration_rows(manifest_path, max_rows, seed)
    size = int(preprocessing["size"][0])
    images = [decode_image(r.image_file, role=f"row {r.number} image") for r in rows]
    batch = preprocess(images, size, preprocessing["mean"], preprocessing["std"])
    batches = [batch[i : i + CALIBRATION_BATCH] for i in range(0, len(batch), CALIBRATION_BATCH)]
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
        staged = Path(tmp) / out.name
        quantize_static(
            str(prepared),
            str(staged),
            _Reader(batches, INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        os.replace(staged, out)
    return {
        "file": out.name,
        "sha256": sha256_file(out),
        "fp32_sha256": sha256_file(fp32_graph),
        "calibration": summary,
        "quantisation": dict(SETTINGS),
    }
