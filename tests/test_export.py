"""ONNX export parity with torch, and the Triton repository config against the ONNX graph."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.classifier.config import ClassifierConfig
from models.classifier.folder import load_classifier
from models.classifier.predict import predict_images
from models.data.manifest import load_manifest
from models.errors import ConfigError
from models.export.onnx import ExportError, export_onnx
from models.export.triton import config_pbtxt, export_triton


@pytest.fixture(scope="module")
def classifier(tiny_classifier):
    return tiny_classifier


def test_onnx_matches_torch_and_the_service_preprocessing(tmp_path, classifier, demo_manifest):
    card = export_onnx(classifier, tmp_path / "clf.onnx")
    assert card["parity_max_abs_diff"] <= 1e-4
    saved = json.loads((tmp_path / "clf.onnx.json").read_text())
    assert saved["preprocessing"]["size"] == [32, 32] and saved["preprocessing"]["layout"] == "NCHW"
    assert saved["threshold"] == load_classifier(classifier).threshold
    session = ort.InferenceSession(str(tmp_path / "clf.onnx"), providers=["CPUExecutionProvider"])
    # Dynamic batch: any batch size runs.
    for batch in (1, 5):
        out = session.run(["probability"], {"image": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert out.shape == (batch, 1)
    # Real images through the documented preprocessing give torch's probabilities.
    from models.classifier.data import preprocess

    rows = load_manifest(demo_manifest, check_files=False).rows[:6]
    images = [r.load()[0] for r in rows]
    onnx_p = session.run(
        ["probability"], {"image": preprocess(images, ClassifierConfig("resnet18", 32)).numpy()}
    )[0]
    np.testing.assert_allclose(onnx_p[:, 0], predict_images(load_classifier(classifier), images), atol=1e-4)


def test_export_refuses_a_graph_that_differs(tmp_path, classifier, monkeypatch):
    import models.export.onnx as export_module

    real_run = ort.InferenceSession.run

    def corrupt(self, names, feeds):
        return [out + 1e-3 for out in real_run(self, names, feeds)]

    monkeypatch.setattr(ort.InferenceSession, "run", corrupt)
    with pytest.raises(ExportError, match="differs from torch"):
        export_module.export_onnx(classifier, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".bad.onnx.*"))


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_triton_config_matches_the_onnx_graph(tmp_path, classifier, kind):
    root = export_triton(classifier, tmp_path / "repo", name="lesion_classifier", instance_kind=kind)
    config = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(root / "1" / "model.onnx")).graph
    assert config.name == "lesion_classifier" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    expected_kind = (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if kind == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert config.instance_group[0].kind == expected_kind
    onnx_types = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
    for spec, tensor in ((config.input[0], graph.input[0]), (config.output[0], graph.output[0])):
        assert spec.name == tensor.name
        assert spec.data_type == onnx_types[tensor.type.tensor_type.elem_type]
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.type.tensor_type.shape.dim]
        assert dims[0] == -1  # the dynamic batch dimension Triton batches over
        assert list(spec.dims) == dims[1:]
    assert json.loads((root / "model_card.json").read_text())["input"]["name"] == "image"


def test_triton_config_errors():
    with pytest.raises(ConfigError, match="preferred batch sizes"):
        config_pbtxt("m", 32, max_batch_size=8, preferred_batch_sizes=(16,))
    with pytest.raises(ConfigError, match="gpu' or 'cpu"):
        config_pbtxt("m", 32, instance_kind="tpu")


def test_export_serving_cli_publishes_a_folder_the_classifier_service_loads(
    tmp_path, classifier, demo_manifest
):
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel
    from models.store import ModelStore

    out, store = tmp_path / "serving", tmp_path / "store"
    args = ["export-serving", "--model", str(classifier), "--out", str(out), "--instance-kind", "cpu"]
    result = CliRunner().invoke(app, [*args, "--store", str(store)])
    assert result.exit_code == 0, result.output
    stored = ModelStore(store).resolve("classifier-onnx", "latest")
    model = ScreeningModel(stored.path, OnnxRuntimeBackend(stored.path / "model.onnx"))
    assert model.threshold == load_classifier(classifier).threshold
    assert (stored.path / "triton" / "lesion_classifier" / "config.pbtxt").is_file()
    images = [r.load()[0] for r in load_manifest(demo_manifest, check_files=False).rows[:4]]
    np.testing.assert_allclose(
        model.probabilities(images), predict_images(load_classifier(classifier), images), atol=0.02
    )
    (stored.path / "model.onnx").write_bytes(b"corrupted")
    from models.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="sha256"):
        ScreeningModel(stored.path, OnnxRuntimeBackend(out / "model.onnx"))


def test_single_threaded_backend_splits_a_batch_across_cores_with_identical_scores(serving_classifier):
    from models.classifier.screening import OnnxRuntimeBackend

    split = OnnxRuntimeBackend(serving_classifier / "model.onnx", threads=1)
    whole = OnnxRuntimeBackend(serving_classifier / "model.onnx", threads=0)
    batch = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    assert whole.splits == 1
    np.testing.assert_array_equal(split.infer(batch), whole.infer(batch))
    assert split.infer(batch[:1]).shape == (1,)
