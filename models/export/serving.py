"""The classifier serving folder: what the classifier service and Triton load.

    model.onnx            the graph (``image`` (N, 3, S, S) -> ``probability`` (N, 1)), checked against torch
    model.onnx.json       its card: threshold, positive label, preprocessing, sha256 of model.onnx
    triton/<name>/        a Triton repository holding the same graph (config.pbtxt + 1/model.onnx)
    model.int8.onnx       with ``int8``: the INT8 QDQ graph calibrated on train rows (models/export/int8.py),
                          in the Triton repository as ``<name>_int8`` (CPU instances); card entry ``int8``
    model_card.json       kind ``lesionsynth.classifier.onnx``; sha256 of every file; written last

One folder serves both backends, so embedded ONNX Runtime and Triton score with the same bytes. The model
version is the first 12 hex digits of model.onnx's sha256; ``source_model_version`` names the trained
classifier it came from. The INT8 graph is an addition to that version, not a new one: the classifier service
serves it with LESIONSYNTH_CLASSIFIER_PRECISION=int8 (``models.classifier.screening.serving_graph``), and
the model store adds it to a stored version that lacks it (``models.store``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from models.errors import ConfigError
from models.export.graph import TRITON_NAME
from models.model_card import CARD_NAME, write_card
from models.model_card import read_card as read_model_card

KIND = "lesionsynth.classifier.onnx"
FORMAT_VERSION = 1
GRAPH = "model.onnx"
GRAPH_CARD = "model.onnx.json"
INT8_GRAPH = "model.int8.onnx"


def export_serving_folder(
    model_dir: str | Path,
    out: str | Path,
    triton_name: str = TRITON_NAME,
    instance_kind: str = "gpu",
    max_batch_size: int = 32,
    int8: bool = False,
    calibration_manifest: str | Path | None = None,
    calibration_rows: int = 256,
) -> dict:
    """Export ``model_dir`` (a classifier folder) into ``out``; return the folder's model card.

    With ``int8``, also write model.int8.onnx calibrated on ``calibration_manifest``'s train rows (at most
    ``calibration_rows``) and its Triton model ``<triton_name>_int8``.
    """
    if int8 and calibration_manifest is None:
        raise ConfigError("--int8 needs --calibration-manifest (its train rows calibrate the INT8 graph)")
    from models.export.onnx import export_onnx
    from models.export.triton import config_pbtxt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_NAME).unlink(missing_ok=True)
    (out / INT8_GRAPH).unlink(missing_ok=True)
    shutil.rmtree(out / "triton" / f"{triton_name}_int8", ignore_errors=True)
    graph_card = export_onnx(model_dir, out / GRAPH)
    size = graph_card["input"]["shape"][-1]
    triton_model = out / "triton" / triton_name
    (triton_model / "1").mkdir(parents=True, exist_ok=True)
    _link(out / GRAPH, triton_model / "1" / GRAPH)
    (triton_model / "config.pbtxt").write_text(
        config_pbtxt(triton_name, size, max_batch_size=max_batch_size, instance_kind=instance_kind)
    )
    files = [GRAPH, GRAPH_CARD, f"triton/{triton_name}/config.pbtxt", f"triton/{triton_name}/1/{GRAPH}"]
    int8_entry = None
    if int8:
        from models.export.int8 import quantize_graph

        int8_entry = quantize_graph(
            out / GRAPH,
            out / INT8_GRAPH,
            calibration_manifest,
            graph_card["preprocessing"],
            max_rows=calibration_rows,
        )
        int8_name = f"{triton_name}_int8"
        int8_model = out / "triton" / int8_name
        (int8_model / "1").mkdir(parents=True, exist_ok=True)
        _link(out / INT8_GRAPH, int8_model / "1" / GRAPH)
        # INT8 is the CPU clinics' graph: CPU instances whatever the FP32 model's kind.
        (int8_model / "config.pbtxt").write_text(
            config_pbtxt(int8_name, size, max_batch_size=max_batch_size, instance_kind="cpu")
        )
        int8_entry["triton_model_name"] = int8_name
        # Its own operating threshold, by the FP32 model's rule on val (models/export/int8.py
        # val_threshold); a model whose threshold was not chosen that way keeps the FP32 one.
        target = _source_card(model_dir).get("target_sensitivity")
        if target:
            from models.export.int8 import val_threshold

            int8_entry.update(
                val_threshold(
                    out / INT8_GRAPH,
                    calibration_manifest,
                    graph_card["preprocessing"],
                    graph_card["positive_label"],
                    float(target),
                )
            )
        else:
            int8_entry["threshold"] = graph_card["threshold"]
            int8_entry["threshold_rule"] = f"the FP32 model's: {graph_card['threshold_rule']}"
        calibration = int8_entry["calibration"]
        calibration["matches_training_manifest"] = calibration[
            "manifest_sha256"
        ] == _training_manifest_sha256(model_dir)
        files += [INT8_GRAPH, f"triton/{int8_name}/config.pbtxt", f"triton/{int8_name}/1/{GRAPH}"]
    card = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "source_model_version": graph_card["source_model_version"],
        "positive_label": graph_card["positive_label"],
        "threshold": graph_card["threshold"],
        "threshold_rule": graph_card["threshold_rule"],
        "preprocessing": graph_card["preprocessing"],
        "image_size": size,
        "triton_model_name": triton_name,
    }
    if int8_entry is not None:
        card["int8"] = int8_entry
    return write_card(out, card, files, version_file=GRAPH)


def _source_card(model_dir: str | Path) -> dict:
    card_path = Path(model_dir) / CARD_NAME
    return json.loads(card_path.read_text()) if card_path.is_file() else {}


def _training_manifest_sha256(model_dir: str | Path) -> str | None:
    return _source_card(model_dir).get("manifest_sha256")


def _link(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:  # a hard link costs no space (a ResNet-50 graph is ~94 MB); copy across filesystems
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def read_card(folder: str | Path) -> dict:
    return read_model_card(folder, KIND, FORMAT_VERSION, "export one with `lesionsynth export-serving`")
