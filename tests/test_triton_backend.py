"""TritonBackend against a real Triton server (PyTriton, .venv-triton) serving a real ONNX graph.

One server per module: scores equal onnxruntime's on the same file; when the server stops the backend
says so (BackendUnavailable naming the URL, ready() False); when it comes back on the same ports the same
backend object answers again without being rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import triton_helpers

from models.classifier.triton_backend import TritonBackend
from models.errors import BackendUnavailable
from models.export.graph import INPUT_NAME, OUTPUT_NAME
from models.export.onnx import OPSET
from models.export.triton import DEFAULT_NAME, config_pbtxt

pytestmark = pytest.mark.timeout(300)

SIZE = 32


server = triton_helpers()


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A Triton repository laid out like export_triton's, with a random-init conv net (fast to export)."""
    server.triton_python()  # skip before exporting anything when .venv-triton is missing
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)
    )

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, image):
            return torch.sigmoid(self.net(image))

    repo = tmp_path_factory.mktemp("triton-repo")
    (repo / DEFAULT_NAME / "1").mkdir(parents=True)
    torch.onnx.export(
        Head().eval(),
        (torch.zeros(2, 3, SIZE, SIZE),),
        str(repo / DEFAULT_NAME / "1" / "model.onnx"),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=OPSET,
        external_data=False,
    )
    (repo / DEFAULT_NAME / "config.pbtxt").write_text(config_pbtxt(DEFAULT_NAME, SIZE, instance_kind="cpu"))
    return repo


@pytest.fixture(scope="module")
def triton(repository):
    with server.start_triton(repository, DEFAULT_NAME) as proc:
        yield proc


def _onnxruntime_scores(repository: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / DEFAULT_NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0][:, 0]


def test_backend_module_is_light():
    import subprocess
    import sys

    # Importing the backend loads neither torch nor tritonclient (the latter only when a backend is made).
    code = "import sys, models.classifier.triton_backend; print('torch' in sys.modules, 'tritonclient' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_triton_scores_equal_onnxruntime(triton, repository):
    backend = TritonBackend("grpc://" + triton.grpc_url, DEFAULT_NAME)
    try:
        rng = np.random.default_rng(0)
        for n in (1, 5):
            batch = rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
            got = backend.infer(batch)
            assert got.shape == (n,) and got.dtype == np.float32
            np.testing.assert_allclose(got, _onnxruntime_scores(repository, batch), atol=1e-5)
    finally:
        backend.close()


def test_unavailable_while_stopped_then_recovers_on_the_same_ports(triton, repository):
    backend = TritonBackend(triton.grpc_url, DEFAULT_NAME, timeout_s=5.0)
    batch = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    expected = _onnxruntime_scores(repository, batch)
    try:
        assert backend.ready()
        np.testing.assert_allclose(backend.infer(batch), expected, atol=1e-5)

        triton.stop()
        with pytest.raises(BackendUnavailable, match=f"Triton at {triton.grpc_url} is unavailable") as err:
            backend.infer(batch)
        assert DEFAULT_NAME in str(err.value) and "retry later" in str(err.value)
        assert backend.ready() is False

        triton.start()  # same ports; the same backend object must answer again by itself
        assert backend.ready()
        np.testing.assert_allclose(backend.infer(batch), expected, atol=1e-5)
    finally:
        backend.close()
        triton.start()  # leave the module's server running for any later test


def test_the_first_call_after_a_long_outage_answers(triton, repository):
    """Repeated failures grow gRPC's reconnect backoff; a fresh channel must not inherit it from the
    shared subchannel pool (CI once failed the first request after Triton's restart this way)."""
    import time

    backend = TritonBackend(triton.grpc_url, DEFAULT_NAME, timeout_s=5.0)
    batch = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    try:
        np.testing.assert_allclose(backend.infer(batch), _onnxruntime_scores(repository, batch), atol=1e-5)
        triton.stop()
        dropped = []  # the failed clients, alive as an uncollected channel would be (grpc objects in cycles)
        for _ in range(8):
            dropped.append(backend._get_client())
            with pytest.raises(BackendUnavailable):
                backend.infer(batch)
            time.sleep(0.5)
        triton.start()
        np.testing.assert_allclose(backend.infer(batch), _onnxruntime_scores(repository, batch), atol=1e-5)
    finally:
        backend.close()
        triton.start()
