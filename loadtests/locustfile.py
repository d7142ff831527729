"""Locust scenarios for the three services, over REST and over gRPC (a custom gRPC user).

    locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:3001 \\
        --grpc-target 127.0.0.1:50052 ClassifierRestUser

User classes (pick one per run; `python -m loadtests.run_load` runs them all and writes docs/loadtest.md):
  SynthesisRestUser, SynthesisGrpcUser        image + mask -> synthetic lesion (--synthesis-steps)
  ClassifierRestUser, ClassifierBatchRestUser, ClassifierGrpcUser
  TrainingRestUser, TrainingGrpcUser          list/get jobs and job types (reads; jobs are not load)
Sample images: LESIONSYNTH_LOADTEST_MANIFEST if set, else PH2 (../shared/data/ph2, 256 px) when present,
else the demo data made for `make serve`.
Token: LESIONSYNTH_API_TOKEN, when the services require one.
"""

from __future__ import annotations

import base64
import os
import random
import time
from functools import cache
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, User, between, events, task

grpc_gevent.init_gevent()  # before any channel: gRPC must cooperate with locust's gevent loop

import grpc  # noqa: E402

from services.grpc_stubs import (  # noqa: E402
    classifier_pb2,
    classifier_pb2_grpc,
    synthesis_pb2,
    synthesis_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MANIFESTS = (
    REPO.parent / "shared" / "data" / "ph2" / "manifest_256.csv",
    REPO / "runs" / "serve-demo" / "data" / "manifest.csv",
)
TOKEN = os.environ.get("LESIONSYNTH_API_TOKEN")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--grpc-target", default="127.0.0.1:50052", help="host:port of the service's gRPC server"
    )
    parser.add_argument("--synthesis-steps", type=int, default=5, help="DDIM steps per synthesis request")
    parser.add_argument("--samples", type=int, default=16, help="distinct images to send")


@cache
def samples(count: int) -> list[tuple[bytes, bytes]]:
    """(image PNG, mask PNG) pairs read from the first manifest that exists."""
    import numpy as np

    from models.data.images import encode_png
    from models.data.manifest import load_manifest

    chosen = os.environ.get("LESIONSYNTH_LOADTEST_MANIFEST")
    for path in [Path(chosen)] if chosen else SAMPLE_MANIFESTS:
        if path.is_file():
            rows = load_manifest(path, check_files=False).rows[:count]
            pairs = []
            for row in rows:
                image, mask = row.load()
                pairs.append((encode_png(image), encode_png(mask.astype(np.uint8) * 255)))
            return pairs
    raise RuntimeError(
        f"no sample images: none of {', '.join(map(str, SAMPLE_MANIFESTS))} exists (run make serve once)"
    )


def auth_headers() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}


class _Rest(HttpUser):
    abstract = True
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.pairs = samples(self.environment.parsed_options.samples)
        self.client.headers.update(auth_headers())


class SynthesisRestUser(_Rest):
    @task
    def synthesize(self) -> None:
        image, mask = random.choice(self.pairs)
        steps = str(self.environment.parsed_options.synthesis_steps)
        files = {"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")}
        self.client.post("/synthesize", files=files, data={"steps": steps}, name="REST /synthesize")


class ClassifierRestUser(_Rest):
    @task
    def classify(self) -> None:
        image, _ = random.choice(self.pairs)
        self.client.post("/classify", files={"image": ("i.png", image, "image/png")}, name="REST /classify")


class ClassifierBatchRestUser(_Rest):
    @task
    def classify_batch(self) -> None:
        image, _ = random.choice(self.pairs)
        body = {"items": [{"image": base64.b64encode(image).decode()}]}
        self.client.post("/classify_batch", json=body, name="REST /classify_batch")


class TrainingRestUser(_Rest):
    @task(3)
    def list_jobs(self) -> None:
        self.client.post("/list_jobs", json={"limit": 20}, name="REST /list_jobs")

    @task(1)
    def job_types(self) -> None:
        self.client.post("/job_types", name="REST /job_types")


class _Grpc(User):
    """A locust user calling a gRPC stub; every call is reported like an HTTP request."""

    abstract = True
    wait_time = between(0.0, 0.05)
    stub_class = None

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.pairs = samples(options.samples)
        self.channel = grpc.insecure_channel(options.grpc_target)
        self.stub = self.stub_class(self.channel)
        self.metadata = (("authorization", f"Bearer {TOKEN}"),) if TOKEN else ()

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, name: str, method, request) -> None:
        started = time.perf_counter()
        error, size = None, 0
        try:
            reply = method(request, metadata=self.metadata, timeout=300)
            size = reply.ByteSize()
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="gRPC",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=error,
            context={},
        )


class SynthesisGrpcUser(_Grpc):
    stub_class = synthesis_pb2_grpc.SynthesisStub

    @task
    def synthesize(self) -> None:
        image, mask = random.choice(self.pairs)
        steps = self.environment.parsed_options.synthesis_steps
        self.call(
            "Synthesize",
            self.stub.Synthesize,
            synthesis_pb2.SynthesizeRequest(image=image, mask=mask, steps=steps),
        )


class ClassifierGrpcUser(_Grpc):
    stub_class = classifier_pb2_grpc.ClassifierStub

    @task
    def classify(self) -> None:
        image, _ = random.choice(self.pairs)
        self.call("Classify", self.stub.Classify, classifier_pb2.ClassifyRequest(image=image))


class TrainingGrpcUser(_Grpc):
    stub_class = training_pb2_grpc.TrainingStub

    @task
    def list_jobs(self) -> None:
        self.call("ListJobs", self.stub.ListJobs, training_pb2.ListJobsRequest(limit=20))
