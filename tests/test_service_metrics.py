"""Each service's /metrics carries its own families and the shared ones, never another service's, with the
three started as `make serve` starts them (services/launch.py). Families appear once sampled, so every
service first answers a good request, a refused one and a gRPC call."""

from __future__ import annotations

import re

import grpc
import httpx
import numpy as np
import pytest
from conftest import png_bytes

from models.store import ModelStore
from services.grpc_stubs import (
    classifier_pb2,
    classifier_pb2_grpc,
    synthesis_pb2,
    synthesis_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

pytestmark = pytest.mark.timeout(300)
#: A service's own families, by name prefix.
OWN = {
    "synthesis": "lesionsynth_synthesis_",
    "classifier": "lesionsynth_classifier_",
    "training": "lesionsynth_job",
}
#: Families of services/common/metrics.py every service samples (the model services also count refusals
#: and name the model they serve).
SHARED = {"lesionsynth_grpc_requests_total", "lesionsynth_grpc_request_duration_seconds"}
MODEL_SHARED = {"lesionsynth_rejected_requests_total", "lesionsynth_model_info"}


def families(text: str) -> set[str]:
    names = set(re.findall(r"^# TYPE (lesionsynth_\w+) ", text, re.M))
    # prometheus_client names a counter's family without _total in # TYPE; use the sample names' form.
    return {n if n.endswith("_total") or f"{n}_total" not in text else f"{n}_total" for n in names}


def exercise(name: str, url: str, grpc_target: str, image: bytes, mask: bytes) -> None:
    with httpx.Client(base_url=url, timeout=120) as http, grpc.insecure_channel(grpc_target) as channel:
        if name == "synthesis":
            files = {"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")}
            assert http.post("/synthesize", files=files, data={"steps": "2", "seed": "1"}).status_code == 200
            bad = {"image": ("i.png", b"nope", "image/png"), "mask": ("m.png", mask, "image/png")}
            assert http.post("/synthesize", files=bad).status_code == 422
            synthesis_pb2_grpc.SynthesisStub(channel).GetInfo(synthesis_pb2.SynthesisInfoRequest())
        elif name == "classifier":
            assert http.post("/classify", files={"image": ("i.png", image, "image/png")}).status_code == 200
            assert http.post("/classify", files={"image": ("i.png", b"nope", "image/png")}).status_code == 422
            classifier_pb2_grpc.ClassifierStub(channel).GetInfo(classifier_pb2.ClassifierInfoRequest())
        else:
            assert http.post("/list_jobs", json={}).status_code == 200
            assert http.post("/submit_job", json={"type": "nope", "params": {}}).status_code == 422
            training_pb2_grpc.TrainingStub(channel).ListJobs(training_pb2.ListJobsRequest())


def test_each_service_exports_its_own_families_and_the_shared_ones(
    tmp_path, tiny_synth, serving_classifier, normal_pair
):
    from services.harness import free_ports, stop_all
    from services.launch import service

    runs = tmp_path / "runs"
    store = ModelStore(runs / "model-store")
    store.publish("synthesizer", tiny_synth)
    store.publish("classifier-onnx", serving_classifier)
    ports = iter(free_ports(6))
    services = {name: service(name, runs, next(ports), next(ports)) for name in OWN}
    image, mask = normal_pair
    image_png, mask_png = png_bytes(image), png_bytes(mask.astype(np.uint8) * 255)
    try:
        for svc in services.values():
            svc.start()
        for name, svc in services.items():
            exercise(name, svc.url, svc.grpc_target, image_png, mask_png)
        exported = {name: families(httpx.get(svc.url + "/metrics").text) for name, svc in services.items()}
    finally:
        stop_all(services.values())
    for name, names in exported.items():
        assert any(n.startswith(OWN[name]) for n in names), (name, names)
        shared = SHARED | (MODEL_SHARED if name != "training" else set())
        assert names >= shared, (name, shared - names)
        others = {n for n in names for other, prefix in OWN.items() if other != name and n.startswith(prefix)}
        assert not others, f"{name} exports other services' families: {sorted(others)}"
