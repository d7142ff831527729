"""The classifier serving folder: what the classifier service and Triton load.

    model.onnx            the graph (``image`` (N, 3, S, S) -> ``probability`` (N, 1)), checked against torch
    model.onnx.json       its card: threshold, positive label, preprocessing, sha256 of model.onnx
    triton/<name>/        a Triton repository holding the same graph (config.pbtxt + 1/model.onnx)
    model_card.json       kind ``lesionsynth.classifier.onnx``; sha256 of every file; written last

One folder serves both backends, so embedded ONNX Runtime and Triton score with the same bytes. The model
version is the first 12 hex digits of model.onnx's sha256; ``source_model_version`` names the trained
classifier it came from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from models.export.graph import TRITON_NAME
from models.model_card import CARD_NAME, write_card
from models.model_card import read_card as read_model_card

KIND = "lesionsynth.classifier.onnx"
FORMAT_VERSION = 1
GRAPH = "model.onnx"
GRAPH_CARD = "model.onnx.json"


def export_serving_folder(
    model_dir: str | Path,
    out: str | Path,
    triton_name: str = TRITON_NAME,
    instance_kind: str = "gpu",
    max_batch_size: int = 32,
) -> dict:
    """Export ``model_dir`` (a classifier folder) into ``out``; return the folder's model card."""
    from models.export.onnx import export_onnx
    from models.export.triton import config_pbtxt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_NAME).unlink(missing_ok=True)
    graph_card = export_onnx(model_dir, out / GRAPH)
    size = graph_card["input"]["shape"][-1]
    triton_model = out / "triton" / triton_name
    (triton_model / "1").mkdir(parents=True, exist_ok=True)
    triton_graph = triton_model / "1" / GRAPH
    triton_graph.unlink(missing_ok=True)
    try:  # a hard link costs no space (a ResNet-50 graph is ~94 MB); copy across filesystems
        os.link(out / GRAPH, triton_graph)
    except OSError:
        shutil.copyfile(out / GRAPH, triton_graph)
    (triton_model / "config.pbtxt").write_text(
        config_pbtxt(triton_name, size, max_batch_size=max_batch_size, instance_kind=instance_kind)
    )
    files = [GRAPH, GRAPH_CARD, f"triton/{triton_name}/config.pbtxt", f"triton/{triton_name}/1/{GRAPH}"]
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
    return write_card(out, card, files, version_file=GRAPH)


def read_card(folder: str | Path) -> dict:
    return read_model_card(folder, KIND, FORMAT_VERSION, "export one with `lesionsynth export-serving`")
