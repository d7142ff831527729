"""The classifier service as users run it, with auth on: REST + gRPC on real ports, the embedded ONNX
Runtime backend and the Triton backend (a real Triton server via PyTriton) giving the same scores.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import png_bytes, rgb, triton_helpers
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from problems import assert_problem
from service_process import ServiceProcess

from models.classifier.folder import load_classifier
from models.classifier.predict import predict_images
from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel
from models.data.manifest import load_manifest
from services.grpc_stubs import classifier_pb2, classifier_pb2_grpc

pytestmark = pytest.mark.timeout(600)
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = (("authorization", f"Bearer {TOKEN}"),)
TARGET = "services.classifier.service:ClassifierService"


def env_for(serving_classifier: Path, work: Path, **extra) -> dict:
    return {
        "LESIONSYNTH_CLASSIFIER": str(serving_classifier),
        "LESIONSYNTH_MODEL_STORE": str(work / "store"),
        "LESIONSYNTH_API_TOKEN": TOKEN,
        "LESIONSYNTH_CLASSIFIER_MAX_LATENCY_MS": "5000",
        **extra,
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory, serving_classifier):
    work = tmp_path_factory.mktemp("classifier-service")
    with ServiceProcess(TARGET, work, env_for(serving_classifier, work)) as svc:
        yield svc


@pytest.fixture(scope="module")
def images(demo_manifest):
    rows = load_manifest(demo_manifest, check_files=False).rows[:6]
    return [row.load()[0] for row in rows]


def rest_scores(url: str, images, headers=AUTH) -> list[dict]:
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for image in images:
            r = http.post("/classify", files={"image": ("x.png", png_bytes(image), "image/png")})
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


def test_rest_grpc_and_in_process_agree(service, serving_classifier, tiny_classifier, images):
    local = ScreeningModel(serving_classifier, OnnxRuntimeBackend(serving_classifier / "model.onnx"))
    expected = local.probabilities(images)
    rest = rest_scores(service.url, images)
    np.testing.assert_allclose([r["probability"] for r in rest], expected, atol=1e-6)
    assert all(r["positive"] == (r["probability"] >= local.threshold) for r in rest)
    assert {r["model_version"] for r in rest} == {local.model_version}
    assert rest[0]["threshold"] == pytest.approx(local.threshold)
    # The service's Pillow preprocessing stays close to the torch preprocessing used in training.
    torch_p = predict_images(load_classifier(tiny_classifier), images)
    np.testing.assert_allclose(expected, torch_p, atol=0.02)

    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        one = stub.Classify(classifier_pb2.ClassifyRequest(image=png_bytes(images[0])), metadata=GRPC_AUTH)
        assert (
            one.probability == pytest.approx(expected[0], abs=1e-6)
            and one.model_version == local.model_version
        )
        batch = stub.ClassifyBatch(
            classifier_pb2.ClassifyBatchRequest(
                items=[classifier_pb2.ClassifyRequest(image=png_bytes(i)) for i in images]
            ),
            metadata=GRPC_AUTH,
        )
        np.testing.assert_allclose([c.probability for c in batch.items], expected, atol=1e-6)
        info = stub.GetInfo(classifier_pb2.ClassifierInfoRequest(), metadata=GRPC_AUTH)
        assert info.backend == "onnxruntime" and info.image_size == 32

    items = [{"image": base64.b64encode(png_bytes(i)).decode()} for i in images]
    r = httpx.post(service.url + "/classify_batch", json={"items": items}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([c["probability"] for c in r.json()], expected, atol=1e-6)


def test_auth_refuses_missing_and_wrong_tokens_but_health_stays_open(service, images):
    body = {"files": {"image": ("x.png", png_bytes(images[0]), "image/png")}}
    for headers, why in (
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
    ):
        r = httpx.post(service.url + "/classify", headers=headers, **body)
        assert_problem(r, 401, why, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(service.url + path).status_code == 200
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for metadata, why in (((), "missing bearer token"), ((("authorization", "Bearer nope"),), "invalid")):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetInfo(classifier_pb2.ClassifierInfoRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and why in err.value.details()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def grey16_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ones((40, 40), np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def test_bad_inputs_and_metrics(service, images):
    # gRPC first: the metrics read below must see a gRPC call whatever ran before this test.
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(classifier_pb2.ClassifyRequest(image=b"nope"), metadata=GRPC_AUTH)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "not a supported image" in err.value.details()
        )
        # A screening service refuses what it cannot score faithfully (models/data/images.py's rule).
        for image, text in ((png_bytes(rgb(1, 1)), "under the minimum"), (float_tiff(), "32-bit float")):
            with pytest.raises(grpc.RpcError) as err:
                stub.Classify(classifier_pb2.ClassifyRequest(image=image), metadata=GRPC_AUTH)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.value.details()
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as http:
        cases = [
            (dict(files={"image": ("x.png", b"GIF89a....", "image/gif")}), 422, "not a supported image"),
            (
                dict(files={"image": ("x.png", png_bytes(images[0])[:100], "image/png")}),
                422,
                "truncated or corrupt",
            ),
            (dict(json={"img": "x"}), 400, "image"),
            (
                dict(files={"image": ("x.png", png_bytes(rgb(1, 1)), "image/png")}),
                422,
                "1x1 is under the minimum of 32 pixels per side",
            ),
            (dict(files={"image": ("x.png", grey16_png(), "image/png")}), 422, "mode I;16 (16-bit grey) is"),
            (dict(files={"image": ("x.tif", float_tiff(), "image/tiff")}), 422, "mode F (32-bit float) is"),
        ]
        for kwargs, status, text in cases:
            assert_problem(http.post("/classify", **kwargs), status, text)
        assert_problem(
            http.post("/classify_batch", json={"items": [{"image": "!!"}]}), 400, "not valid base64"
        )
        tiny = base64.b64encode(png_bytes(rgb(1, 1))).decode()
        problem = assert_problem(
            http.post("/classify_batch", json={"items": [{"image": tiny}]}),
            422,
            "under the minimum",
            "invalid-image",
        )
        assert problem["errors"][0]["pointer"] == "#/items/0"
        assert (
            http.post(
                "/classify", files={"image": ("x.png", png_bytes(rgb(32, 40)), "image/png")}
            ).status_code
            == 200
        )
        metrics = http.get("/metrics").text
        # The document declares what the service answers: problem details, base64 as base64.
        doc = http.get("/docs.json").json()
    batch = doc["paths"]["/classify_batch"]["post"]
    assert batch["requestBody"]["required"] is True
    for status in ("400", "401", "413", "422", "429", "500", "503"):
        assert "application/problem+json" in batch["responses"][status]["content"], status
    text = json.dumps(batch["requestBody"]) + json.dumps(doc["components"])
    assert '"format": "byte"' in text and '"contentEncoding": "base64"' in text
    for name in (
        "lesionsynth_classifier_probability_bucket",
        "lesionsynth_classifier_decisions_total",
        "lesionsynth_rejected_requests_total",
        "lesionsynth_grpc_requests_total",
        "bentoml_service_request_total",
    ):
        assert name in metrics, name


def test_triton_backend_gives_the_same_scores_and_says_when_triton_is_down(
    tmp_path_factory, serving_classifier, images, service
):
    helpers = triton_helpers()
    helpers.triton_python()  # skips with the command to run when .venv-triton is missing
    expected = [r["probability"] for r in rest_scores(service.url, images)]
    work = tmp_path_factory.mktemp("classifier-triton")
    with helpers.start_triton(serving_classifier / "triton", "lesion_classifier") as triton:
        env = env_for(serving_classifier, work, TRITON_URL=triton.grpc_url, LESIONSYNTH_TRITON_TIMEOUT_S="5")
        with ServiceProcess(TARGET, work, env) as via_triton:
            got = rest_scores(via_triton.url, images)
            np.testing.assert_allclose([r["probability"] for r in got], expected, atol=1e-5)
            info = httpx.post(via_triton.url + "/info", headers=AUTH).json()
            assert info["backend"] == "triton"

            triton.stop()
            r = httpx.post(
                via_triton.url + "/classify",
                headers=AUTH,
                files={"image": ("x.png", png_bytes(images[0]), "image/png")},
                timeout=60,
            )
            assert_problem(r, 503, "Triton at", "backend-unavailable")
            assert "unavailable" in r.json()["detail"]
            with grpc.insecure_channel(via_triton.grpc_target) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    classifier_pb2_grpc.ClassifierStub(channel).Classify(
                        classifier_pb2.ClassifyRequest(image=png_bytes(images[0])), metadata=GRPC_AUTH
                    )
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Triton at" in err.value.details()
            items = [{"image": base64.b64encode(png_bytes(images[0])).decode()}]
            r = httpx.post(
                via_triton.url + "/classify_batch", json={"items": items}, headers=AUTH, timeout=60
            )
            assert r.status_code == 503 and "Triton at" in r.text

            # Falling back to embedded ONNX Runtime is a setting, never a silent switch.
            fallback_env = {**env, "LESIONSYNTH_FALLBACK_TO_ONNXRUNTIME": "true"}
            with ServiceProcess(TARGET, work / "fallback", fallback_env) as with_fallback:
                got = rest_scores(with_fallback.url, images[:2])
                np.testing.assert_allclose([r["probability"] for r in got], expected[:2], atol=1e-5)
                metrics = httpx.get(with_fallback.url + "/metrics").text
                assert 'lesionsynth_classifier_backend_unavailable_total{backend="triton"}' in metrics

            triton.start()
            again = rest_scores(via_triton.url, images[:2])
            np.testing.assert_allclose([r["probability"] for r in again], expected[:2], atol=1e-5)


def test_the_classifier_service_runs_without_torch(serving_classifier):
    """Its image carries onnxruntime / tritonclient, not torch: the service and its handler must not import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from services.classifier.settings import ClassifierSettings\n"
        "from services.classifier.handler import ClassifierHandler\n"
        "import services.classifier.service, services.classifier.grpc_servicer\n"
        "handler = ClassifierHandler(ClassifierSettings.from_env())\n"
        "assert handler.info()['backend'] == 'onnxruntime'\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'diffusers') if m in sys.modules))\n"
    )
    env = {**__import__("os").environ, "LESIONSYNTH_CLASSIFIER": str(serving_classifier)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_dicom_image_scores_like_its_png(service, images):
    """DICOM goes through the same decode path (models/data/dicom.py): a multipart part holding a DICOM
    file, a raw application/dicom body, base64 JSON and gRPC bytes score exactly like the same pixels as
    PNG."""
    from dicom_samples import dataset, to_bytes

    image = images[0]
    dicom = to_bytes(dataset(image))
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as http:
        png = http.post("/classify", files={"image": ("x.png", png_bytes(image), "image/png")})
        dcm = http.post("/classify", files={"image": ("x.dcm", dicom, "application/dicom")})
        batch = http.post("/classify_batch", json={"items": [{"image": base64.b64encode(dicom).decode()}]})
        raw = http.post("/classify", content=dicom, headers={"Content-Type": "application/dicom"})
        elsewhere = http.post("/classify_batch", content=dicom, headers={"Content-Type": "application/dicom"})
    assert png.status_code == dcm.status_code == batch.status_code == raw.status_code == 200, raw.text
    assert dcm.json()["probability"] == png.json()["probability"] == raw.json()["probability"]
    assert_problem(elsewhere, 415, "unsupported content type 'application/dicom'")  # only one-file endpoints
    assert batch.json()[0]["probability"] == png.json()["probability"]
    with grpc.insecure_channel(service.grpc_target) as channel:
        reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(image=dicom), metadata=GRPC_AUTH
        )
    assert abs(reply.probability - png.json()["probability"]) < 1e-6
