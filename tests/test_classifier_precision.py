"""The classifier service serves the FP32 or the INT8 graph (LESIONSYNTH_CLASSIFIER_PRECISION, issue 14):
which file and its sha256 check (models/classifier/screening.py), /info + GetInfo + the precision metric,
the same scores as ONNX Runtime on model.int8.onnx, refusals at startup, and the model store adding an INT8
graph to a stored version once (models/store.py).

The INT8 serving folder is test_int8.py's export of the tiny fixture classifier; one service process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import png_bytes
from service_process import ServiceProcess, free_port
from test_int8 import MAX_ABS_DIFF, export_int8

from models.artifacts import sha256_file
from models.classifier.screening import preprocess, serving_graph, triton_model_name
from models.data.manifest import load_manifest
from models.errors import ConfigError, ModelFolderError
from models.export.serving import read_card
from models.model_card import CARD_NAME, verify_files
from models.store import ModelStore
from services.grpc_stubs import classifier_pb2, classifier_pb2_grpc

pytestmark = pytest.mark.timeout(600)
TARGET = "services.classifier.service:ClassifierService"
INT8_FILES = ("model.int8.onnx", "triton/lesion_classifier_int8/config.pbtxt")


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory, tiny_classifier, demo_manifest) -> Path:
    return export_int8(tmp_path_factory.mktemp("int8") / "serving", tiny_classifier, demo_manifest)


@pytest.fixture(scope="module")
def images(demo_manifest):
    manifest = load_manifest(demo_manifest, check_files=False)
    return [row.load()[0] for row in manifest.rows_in("val") + manifest.rows_in("test")][:8]


def ort_direct(graph: Path, folder: Path, images) -> np.ndarray:
    """ONNX Runtime run directly on ``graph``, with the screening preprocessing."""
    import onnxruntime as ort

    pre = json.loads((folder / "model.onnx.json").read_text())["preprocessing"]
    batch = preprocess(images, int(pre["size"][0]), pre["mean"], pre["std"])
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0].reshape(-1)


def without_int8(int8_folder: Path, out: Path) -> Path:
    """A copy of the INT8 folder as plain `export-serving` writes it: same version, no INT8 graph."""
    shutil.copytree(int8_folder, out)
    card = json.loads((out / CARD_NAME).read_text())
    del card["int8"]
    card["files"] = {n: d for n, d in card["files"].items() if "int8" not in n}
    (out / "model.int8.onnx").unlink()
    shutil.rmtree(out / "triton" / "lesion_classifier_int8")
    (out / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out


def test_int8_service_reports_its_graph_and_scores_like_onnxruntime_on_it(tmp_path, int8_folder, images):
    card = read_card(int8_folder)
    int8_sha = card["int8"]["sha256"]
    assert int8_sha == sha256_file(int8_folder / "model.int8.onnx") == card["files"]["model.int8.onnx"]
    expected = ort_direct(int8_folder / "model.int8.onnx", int8_folder, images)
    fp32 = ort_direct(int8_folder / "model.onnx", int8_folder, images)
    env = {
        "LESIONSYNTH_CLASSIFIER": str(int8_folder),
        "LESIONSYNTH_CLASSIFIER_PRECISION": "int8",
        "LESIONSYNTH_MODEL_STORE": str(tmp_path / "store"),
        "LESIONSYNTH_CLASSIFIER_MAX_LATENCY_MS": "5000",
    }
    with ServiceProcess(TARGET, tmp_path, env) as svc, httpx.Client(base_url=svc.url, timeout=60) as http:
        info = http.post("/info").json()
        assert info["precision"] == "int8" and info["graph_sha256"] == int8_sha
        assert info["backend"] == "onnxruntime" and info["model_version"] == card["model_version"]
        got = []
        for image in images:
            r = http.post("/classify", files={"image": ("x.png", png_bytes(image), "image/png")})
            assert r.status_code == 200, r.text
            got.append(r.json()["probability"])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        # INT8 differs from FP32 only within test_int8.py's stated tolerance.
        assert np.abs(np.asarray(got) - fp32).max() <= MAX_ABS_DIFF
        with grpc.insecure_channel(svc.grpc_target) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            grpc_info = stub.GetInfo(classifier_pb2.ClassifierInfoRequest())
            assert grpc_info.precision == "int8" and grpc_info.graph_sha256 == int8_sha
            batch = stub.ClassifyBatch(
                classifier_pb2.ClassifyBatchRequest(
                    items=[classifier_pb2.ClassifyRequest(image=png_bytes(i)) for i in images]
                )
            )
            np.testing.assert_allclose([c.probability for c in batch.items], expected, atol=1e-6)
        metrics = http.get("/metrics").text
        # BentoML's multiprocess metrics add a pid label.
        served = re.findall(
            r'^lesionsynth_classifier_precision_info\{[^}]*precision="(\w+)"[^}]*\} 1\.0$', metrics, re.M
        )
        assert served == ["int8"], metrics[-3000:]


def test_fp32_by_default_int8_on_triton_names_the_int8_model_and_the_fallback_keeps_int8(
    monkeypatch, int8_folder, images
):
    from services.classifier.handler import ClassifierHandler
    from services.classifier.settings import ClassifierSettings

    card = read_card(int8_folder)
    for name in ("TRITON_URL", "LESIONSYNTH_TRITON_URL", "LESIONSYNTH_TRITON_MODEL", "LESIONSYNTH_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LESIONSYNTH_CLASSIFIER", str(int8_folder))
    monkeypatch.delenv("LESIONSYNTH_CLASSIFIER_PRECISION", raising=False)
    handler = ClassifierHandler(ClassifierSettings.from_env())
    try:
        info = handler.info()
        assert info["precision"] == "fp32" and info["graph_sha256"] == card["files"]["model.onnx"]
        assert handler.model.graph_path == int8_folder / "model.onnx"
    finally:
        handler.close()

    assert serving_graph(int8_folder, "int8") == (int8_folder / "model.int8.onnx", card["int8"]["sha256"])
    assert triton_model_name(card, "int8") == "lesion_classifier_int8"
    assert triton_model_name(card, "fp32") == "lesion_classifier"
    # Triton down (nothing listens) + fallback on: embedded ONNX Runtime on the INT8 graph, not model.onnx.
    monkeypatch.setenv("LESIONSYNTH_CLASSIFIER_PRECISION", "int8")
    monkeypatch.setenv("LESIONSYNTH_TRITON_URL", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("LESIONSYNTH_TRITON_TIMEOUT_S", "2")
    monkeypatch.setenv("LESIONSYNTH_FALLBACK_TO_ONNXRUNTIME", "true")
    handler = ClassifierHandler(ClassifierSettings.from_env())
    try:
        assert handler.model.backend.model_name == "lesion_classifier_int8"
        got = [r.probability for r in handler.classify(images[:3], "rest")]
        assert handler._fallback is not None and handler._fallback.precision == "int8"
        np.testing.assert_allclose(got, ort_direct(int8_folder / "model.int8.onnx", int8_folder, images[:3]))
    finally:
        handler.close()
    monkeypatch.setenv("LESIONSYNTH_TRITON_MODEL", "my_int8")
    handler = ClassifierHandler(ClassifierSettings.from_env())
    try:
        assert handler.model.backend.model_name == "my_int8"
    finally:
        handler.close()


def test_bad_precision_and_int8_without_the_graph_are_refused_at_startup(monkeypatch, serving_classifier):
    from services.classifier.settings import ClassifierSettings

    for bad in ("INT8", "fp16", " "):
        monkeypatch.setenv("LESIONSYNTH_CLASSIFIER_PRECISION", bad)
        with pytest.raises(ConfigError, match="LESIONSYNTH_CLASSIFIER_PRECISION must be one of fp32, int8"):
            ClassifierSettings.from_env()
    version = read_card(serving_classifier)["model_version"]
    with pytest.raises(ModelFolderError, match=rf"classifier-onnx {version}\) has no INT8 graph") as err:
        serving_graph(serving_classifier, "int8")
    assert "lesionsynth export-serving --int8 --calibration-manifest" in str(err.value)
    # What `bentoml serve` does first: import the service module, which refuses before any worker starts.
    env = {
        **os.environ,
        "LESIONSYNTH_CLASSIFIER": str(serving_classifier),
        "LESIONSYNTH_CLASSIFIER_PRECISION": "int8",
        "BENTOML_DO_NOT_TRACK": "True",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import services.classifier.service"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"(classifier-onnx {version}) has no INT8 graph" in result.stderr
    assert "export-serving --int8 --calibration-manifest" in result.stderr


def test_the_store_adds_int8_to_a_stored_version_once_and_never_replaces_it(
    tmp_path, monkeypatch, int8_folder
):
    store = ModelStore(tmp_path / "store")
    plain = without_int8(int8_folder, tmp_path / "plain")
    first = store.publish("classifier-onnx", plain)
    assert first.version == read_card(int8_folder)["model_version"]
    published_at = first.published_at

    # A crash before the card is replaced leaves the version as it was: no INT8, intact.
    real_rename = os.rename

    def crash_on_card(src, dst, *args, **kwargs):
        if Path(dst).name == CARD_NAME:
            raise OSError("simulated crash")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr("models.store.os.rename", crash_on_card)
    with pytest.raises(OSError, match="simulated crash"):
        store.publish("classifier-onnx", int8_folder)
    monkeypatch.setattr("models.store.os.rename", real_rename)
    card = read_card(first.path)
    verify_files(first.path, card)
    assert "int8" not in card and not any(n in card["files"] for n in INT8_FILES)
    with pytest.raises(ModelFolderError, match="no INT8 graph"):
        serving_graph(first.path, "int8")

    again = store.publish("classifier-onnx", int8_folder)
    assert again.path == first.path and again.published_at == published_at
    card = read_card(first.path)
    verify_files(first.path, card)
    assert card["int8"] == read_card(int8_folder)["int8"]
    assert all(n in card["files"] for n in INT8_FILES)
    assert (first.path / "model.int8.onnx").read_bytes() == (int8_folder / "model.int8.onnx").read_bytes()
    assert store.publish("classifier-onnx", int8_folder).path == first.path  # the same graph: nothing to do

    # A different INT8 graph of the same version is refused and changes nothing.
    other = tmp_path / "other"
    shutil.copytree(int8_folder, other)
    for name in ("model.int8.onnx", "triton/lesion_classifier_int8/1/model.onnx"):
        (other / name).unlink()
        (other / name).write_bytes(b"another int8 graph")
    other_card = json.loads((other / CARD_NAME).read_text())
    digest = sha256_file(other / "model.int8.onnx")
    other_card["int8"]["sha256"] = other_card["files"]["model.int8.onnx"] = digest
    other_card["files"]["triton/lesion_classifier_int8/1/model.onnx"] = digest
    (other / CARD_NAME).write_text(json.dumps(other_card))
    with pytest.raises(ModelFolderError, match="already has a different INT8 graph"):
        store.publish("classifier-onnx", other)
    assert read_card(first.path)["int8"]["sha256"] == read_card(int8_folder)["int8"]["sha256"]
    verify_files(first.path, read_card(first.path))
