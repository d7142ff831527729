"""INT8 screening graph (export-serving --int8): QDQ static quantisation calibrated on train rows only.

Stated tolerance on the tiny fixture classifier (calibrated on all of the demo manifest's train rows), over
its val + test images (never seen by the calibrator): at least 94% of decisions (probability >= the card's
threshold) equal to FP32's (at most 1 of the 18 images: one FP32 probability lies 0.0004 above the
threshold), and max |p_int8 - p_fp32| <= 0.02. Measured when written: 18/18 same decisions, max diff
0.0032 (mean 0.0018). The bounds can fail: calibrated on 16 train rows, max diff was 0.084; on 8, 0.102
with 12/18 same decisions.
"""

import csv
import json

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.data.manifest import load_manifest
from models.errors import ConfigError

MIN_AGREEMENT = 0.94
MAX_ABS_DIFF = 0.02
CALIBRATION_ROWS = 64  # more than the demo's train rows: all of them


def export_int8(out, tiny_classifier, demo_manifest, rows: int = CALIBRATION_ROWS):
    """`lesionsynth export-serving --int8` of the tiny classifier into ``out`` (also used by
    tests/test_classifier_precision.py)."""
    from typer.testing import CliRunner

    from lesionsynth.cli import app

    args = ["export-serving", "--model", str(tiny_classifier), "--out", str(out), "--instance-kind", "cpu"]
    args += ["--int8", "--calibration-manifest", str(demo_manifest)]
    result = CliRunner().invoke(app, [*args, "--calibration-rows", str(rows)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory, tiny_classifier, demo_manifest):
    return export_int8(tmp_path_factory.mktemp("int8") / "serving", tiny_classifier, demo_manifest)


def test_int8_graph_gives_fp32_decisions_on_val_and_test(int8_folder, demo_manifest):
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel
    from models.data.images import decode_image

    fp32 = ScreeningModel(int8_folder, OnnxRuntimeBackend(int8_folder / "model.onnx"))
    int8 = ScreeningModel(int8_folder, OnnxRuntimeBackend(int8_folder / "model.int8.onnx"))
    graph = onnx.load(str(int8_folder / "model.int8.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # really quantised, QDQ format
    manifest = load_manifest(demo_manifest, check_files=False)
    rows = manifest.rows_in("val") + manifest.rows_in("test")
    images = [decode_image(r.image_file) for r in rows]
    p32, p8 = fp32.probabilities(images), int8.probabilities(images)
    agreement = float(np.mean((p32 >= fp32.threshold) == (p8 >= fp32.threshold)))
    max_diff = float(np.abs(p8 - p32).max())
    print(f"INT8 vs FP32 on {len(rows)} val+test images: agreement {agreement:.3f}, max diff {max_diff:.4f}")
    assert agreement >= MIN_AGREEMENT and max_diff <= MAX_ABS_DIFF


def test_int8_card_records_train_only_calibration_and_verifies(int8_folder, demo_manifest, tiny_classifier):
    from models.export.serving import read_card
    from models.model_card import verify_files

    card = read_card(int8_folder)
    verify_files(int8_folder, card)
    entry = card["int8"]
    calibration = entry["calibration"]
    manifest = load_manifest(demo_manifest, check_files=False)
    assert calibration["splits"] == ["train"]
    assert calibration["rows"] == len(manifest.rows_in("train")) < CALIBRATION_ROWS == calibration["max_rows"]
    assert calibration["manifest_sha256"] == manifest.sha256()
    assert calibration["matches_training_manifest"] is True
    assert entry["quantisation"]["format"] == "QDQ" and entry["quantisation"]["per_channel"] is True
    assert card["files"]["model.int8.onnx"] == entry["sha256"]
    assert card["files"]["model.onnx"] == entry["fp32_sha256"]
    # The version stays the FP32 graph's: the INT8 file is an addition, not a new model.
    assert card["model_version"] == card["files"]["model.onnx"][:12]
    config_path = int8_folder / "triton" / "lesion_classifier_int8" / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    assert config.name == "lesion_classifier_int8"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    triton_graph = int8_folder / "triton" / "lesion_classifier_int8" / "1" / "model.onnx"
    assert triton_graph.read_bytes() == (int8_folder / "model.int8.onnx").read_bytes()
    assert json.loads((int8_folder / "model_card.json").read_text())["int8"]["file"] == "model.int8.onnx"


def test_a_folder_without_int8_still_verifies_and_reexport_drops_a_stale_int8(
    tmp_path, int8_folder, tiny_classifier, serving_classifier
):
    import shutil

    from models.errors import ModelFolderError
    from models.export.serving import export_serving_folder, read_card
    from models.model_card import verify_files

    plain = read_card(serving_classifier)
    verify_files(serving_classifier, plain)
    assert "int8" not in plain and not (serving_classifier / "model.int8.onnx").exists()
    copy = tmp_path / "serving"
    shutil.copytree(int8_folder, copy)
    (copy / "model.int8.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelFolderError, match="sha256"):
        verify_files(copy, read_card(copy))
    card = export_serving_folder(tiny_classifier, copy, instance_kind="cpu")
    verify_files(copy, card)
    assert "int8" not in card and not (copy / "model.int8.onnx").exists()
    assert not (copy / "triton" / "lesion_classifier_int8").exists()


def test_int8_calibration_refuses_bad_inputs(tmp_path, tiny_classifier, demo_manifest):
    from models.export.int8 import calibration_rows
    from models.export.serving import export_serving_folder

    with pytest.raises(ConfigError, match="calibration-manifest"):
        export_serving_folder(tiny_classifier, tmp_path / "s", int8=True)
    with pytest.raises(ConfigError, match="at least 1"):
        calibration_rows(demo_manifest, 0)
    rows, summary = calibration_rows(demo_manifest, 10_000)
    train = load_manifest(demo_manifest, check_files=False).rows_in("train")
    assert summary["rows"] == len(train) == len(rows) and all(r.split == "train" for r in rows)
    rows, summary = calibration_rows(demo_manifest, 5)
    assert summary["rows"] == len(rows) == 5 and summary["train_rows_available"] == len(train)
    with demo_manifest.open(newline="") as f:
        table = list(csv.DictReader(f))
    unsplit = tmp_path / "unsplit.csv"
    with unsplit.open("w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in table[0] if c != "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    for name in ("images", "masks"):
        (tmp_path / name).symlink_to(demo_manifest.parent / name)
    with pytest.raises(ConfigError, match="no complete 'split' column"):
        calibration_rows(unsplit, 4)


def test_publishing_int8_over_the_same_fp32_version_adds_the_int8_graph(
    tmp_path, serving_classifier, tiny_classifier, demo_manifest
):
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from models.export.serving import read_card
    from models.model_card import verify_files
    from models.store import ModelStore

    store = ModelStore(tmp_path / "store")
    store.publish("classifier-onnx", serving_classifier)
    out = tmp_path / "serving"
    args = ["export-serving", "--model", str(tiny_classifier), "--out", str(out), "--instance-kind", "cpu"]
    args += ["--int8", "--calibration-manifest", str(demo_manifest), "--calibration-rows", "4"]
    result = CliRunner().invoke(app, [*args, "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    # A new version is published with its INT8 graph; the same version (export is deterministic) gets the
    # INT8 graph added (models/store.py; the refusals: tests/test_classifier_precision.py).
    stored = store.resolve("classifier-onnx", read_card(out)["model_version"])
    card = read_card(stored.path)
    verify_files(stored.path, card)
    assert card["int8"]["sha256"] == read_card(out)["int8"]["sha256"]


def test_int8_graph_gets_its_own_threshold_chosen_on_val(int8_folder, demo_manifest, tiny_classifier):
    """Quantisation shifts probabilities a little; the INT8 graph's operating threshold is chosen on val by
    the FP32 model's rule (most specific reaching the target sensitivity), and the INT8 model serves it."""
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel
    from models.data.images import decode_image
    from models.evaluation.roc import threshold_for_sensitivity
    from models.export.serving import read_card

    card = read_card(int8_folder)
    target = json.loads((tiny_classifier / "model_card.json").read_text())["target_sensitivity"]
    entry = card["int8"]
    assert "INT8 graph" in entry["threshold_rule"] and f">= {target} on val" in entry["threshold_rule"]
    int8 = ScreeningModel(int8_folder, OnnxRuntimeBackend(int8_folder / "model.int8.onnx"), precision="int8")
    fp32 = ScreeningModel(int8_folder, OnnxRuntimeBackend(int8_folder / "model.onnx"))
    assert int8.threshold == entry["threshold"] and int8.threshold_rule == entry["threshold_rule"]
    assert fp32.threshold == card["threshold"]
    rows = load_manifest(demo_manifest, check_files=False).rows_in("val")
    y = np.array([int(r.label == card["positive_label"]) for r in rows])
    p8 = int8.probabilities([decode_image(r.image_file) for r in rows]).astype(np.float64)
    assert entry["threshold"] == pytest.approx(threshold_for_sensitivity(y, p8, target), abs=1e-6)
    assert entry["val"]["rows"] == len(rows)
    assert float((p8[y == 1] >= entry["threshold"]).mean()) >= target
