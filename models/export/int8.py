"""INT8 screening graph: ONNX Runtime static quantisation (QDQ) of the serving folder's model.onnx.

Calibration reads ONLY the manifest's ``train`` rows (real rows, and synthetic rows training may use:
``models.review.keeps_row``), at most ``max_rows`` of them drawn with a fixed seed, each preprocessed
exactly as screening does (``models.classifier.screening.preprocess``: Pillow resize, the card's mean and
std). Validation and test rows never reach the calibrator, so they stay a fair check of the INT8 graph.

The INT8 graph gets its own operating threshold, chosen on the manifest's ``val`` rows by the FP32
model's rule (:func:`val_threshold`), when the FP32 model's was chosen that way (``target_sensitivity``).

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


def _inputs(rows: Sequence, preprocessing: dict) -> np.ndarray:
    """(N, 3, S, S) float32: the rows' images decoded and preprocessed exactly as screening does."""
    from models.classifier.screening import preprocess
    from models.data.images import decode_image

    images = [decode_image(r.image_file, role=f"row {r.number} image") for r in rows]
    return preprocess(images, int(preprocessing["size"][0]), preprocessing["mean"], preprocessing["std"])


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

    from models.export.graph import INPUT_NAME

    rows, summary = calibration_rows(manifest_path, max_rows, seed)
    batch = _inputs(rows, preprocessing)
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


def val_threshold(
    graph: str | Path, manifest_path: str | Path, preprocessing: dict, positive_label: str, target: float
) -> dict:
    """The INT8 graph's own operating threshold: the most specific one reaching ``target`` sensitivity on
    the manifest's ``val`` rows, the rule train-classifier applies to the FP32 model.

    Why its own: quantisation keeps the ranking (AUC) but shifts the probabilities by ~0.01-0.03, and a
    threshold chosen on val sits where scores are dense; on the ISIC 2017 test split the FP32 threshold
    applied to the INT8 graph flipped 58 of 480 decisions and moved specificity from 0.386 to 0.247
    (docs/benchmarks/int8.md). Val rows only: the test split stays unseen."""
    import onnxruntime as ort

    from models.data.manifest import load_manifest
    from models.evaluation.roc import sensitivity_specificity, threshold_for_sensitivity
    from models.review import keeps_row

    rows = [r for r in load_manifest(manifest_path).rows_in("val") if keeps_row(r.fields)]
    y = np.array([int(r.label == positive_label) for r in rows])
    if not rows or y.min() == y.max():
        raise ConfigError(f"{manifest_path}: its val rows need both classes to choose the INT8 threshold")
    # The CPU provider, as the INT8 graph is served (a GPU build of onnxruntime would otherwise pick CUDA).
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = [
        session.run(None, {name: _inputs(rows[i : i + CALIBRATION_BATCH], preprocessing)})[0].reshape(-1)
        for i in range(0, len(rows), CALIBRATION_BATCH)
    ]
    p = np.concatenate(scores).astype(np.float64)
    threshold = threshold_for_sensitivity(y, p, target)
    sens, spec = sensitivity_specificity(y, p, threshold)
    return {
        "threshold": threshold,
        "threshold_rule": f"most specific threshold reaching sensitivity >= {target} on val (INT8 graph)",
        "val": {"rows": len(rows), "sensitivity": round(sens, 4), "specificity": round(spec, 4)},
    }
