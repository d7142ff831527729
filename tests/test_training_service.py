"""The training-job service as users run it: REST + gRPC (with WatchJob streaming) on real ports, jobs in
their own processes, SQLite records that survive a kill -9 of the service, a model store with no partial
artifact afterwards.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import httpx
import pytest
from problems import assert_problem
from service_process import ServiceProcess

from models.store import ModelStore
from services.grpc_stubs import training_pb2, training_pb2_grpc

pytestmark = pytest.mark.timeout(900)
TARGET = "services.training.service:TrainingService"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, demo_manifest) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("training-service")
    data = work / "data"
    shutil.copytree(demo_manifest.parent, data)
    return {"work": work, "data": data, "store": work / "store", "jobs": work / "jobs", "out": work / "out"}


def service_for(dirs: dict[str, Path]) -> ServiceProcess:
    env = {
        "LESIONSYNTH_DATA_ROOTS": str(dirs["data"]),
        "LESIONSYNTH_OUTPUT_ROOT": str(dirs["out"]),
        "LESIONSYNTH_JOBS_DIR": str(dirs["jobs"]),
        "LESIONSYNTH_MODEL_STORE": str(dirs["store"]),
    }
    return ServiceProcess(TARGET, dirs["work"], env)


@pytest.fixture(scope="module")
def service(dirs):
    with service_for(dirs) as svc:
        yield svc


def synth_params(dirs, max_steps: int = 24, checkpoint_every: int = 8) -> dict:
    return {
        "manifest": str(dirs["data"] / "manifest.csv"),
        "lesion_label": "lesion",
        "resolution": 32,
        "preset": "tiny",
        "max_steps": max_steps,
        "batch_size": 4,
        "checkpoint_every": checkpoint_every,
    }


def wait_for(url: str, job_id: str, done, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.post(url + "/get_job", json={"id": job_id}, timeout=30).json()
        if done(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach the expected state: {job}")


def finished(job: dict) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled", "interrupted")


def test_submit_watch_and_publish_over_rest_and_grpc(service, dirs):
    r = httpx.post(
        service.url + "/submit_job", json={"type": "train-synthesizer", "params": synth_params(dirs)}
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "queued" and job["params"]["max_steps"] == 24

    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = training_pb2_grpc.TrainingStub(channel)
        events = list(stub.WatchJob(training_pb2.WatchJobRequest(id=job["id"]), timeout=300))
        assert events[-1].state == training_pb2.JOB_STATE_SUCCEEDED, events[-1]
        assert {training_pb2.JOB_STATE_RUNNING, training_pb2.JOB_STATE_SUCCEEDED} <= {e.state for e in events}
        result = json.loads(events[-1].result_json)
        listed = stub.ListJobs(training_pb2.ListJobsRequest(state=training_pb2.JOB_STATE_SUCCEEDED)).jobs
        assert job["id"] in {j.id for j in listed}

    done = httpx.post(service.url + "/get_job", json={"id": job["id"]}).json()
    assert done["state"] == "succeeded" and done["result"]["version"] == result["version"]
    stored = ModelStore(dirs["store"]).resolve("synthesizer", result["version"])
    assert (stored.path / "model_card.json").is_file()
    logs = httpx.post(service.url + "/job_logs", json={"id": job["id"]}).json()
    assert isinstance(logs["text"], str)
    metrics = httpx.get(service.url + "/metrics").text
    assert "lesionsynth_jobs{" in metrics and "lesionsynth_jobs_queued" in metrics


def test_bad_requests_get_clear_errors(service, dirs):
    cases = [
        ({"type": "paint-the-fence", "params": {}}, 422, "unknown job type"),
        (
            {"type": "train-synthesizer", "params": {**synth_params(dirs), "manifest": "/etc/passwd"}},
            422,
            "outside",
        ),
        ({"type": "train-synthesizer", "params": {**synth_params(dirs), "colour": "red"}}, 422, "colour"),
        ({"type": "train-synthesizer", "params": {**synth_params(dirs), "max_steps": 0}}, 422, "max_steps"),
        ({"params": {}}, 400, "type"),
    ]
    for body, status, text in cases:
        assert_problem(httpx.post(service.url + "/submit_job", json=body), status, text)
    assert_problem(httpx.post(service.url + "/get_job", json={"id": "0" * 32}), 404, "no job", "not-found")
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = training_pb2_grpc.TrainingStub(channel)
        for request, code, text in (
            (
                training_pb2.SubmitJobRequest(type="nope", params_json="{}"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "unknown",
            ),
            (
                training_pb2.SubmitJobRequest(type="balance", params_json="{oops"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "JSON",
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitJob(request)
            assert err.value.code() == code and text in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(training_pb2.GetJobRequest(id="missing"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchJob(training_pb2.WatchJobRequest(id="missing")))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    ok = httpx.post(service.url + "/list_jobs", json={})
    assert ok.status_code == 200


def test_cancel_a_running_job(service, dirs):
    job = httpx.post(
        service.url + "/submit_job",
        json={"type": "train-synthesizer", "params": synth_params(dirs, 100000, 50)},
    ).json()
    wait_for(service.url, job["id"], lambda j: j["state"] == "running")
    httpx.post(service.url + "/cancel_job", json={"id": job["id"]})
    done = wait_for(service.url, job["id"], finished, timeout=60)
    assert done["state"] == "cancelled"
    again = httpx.post(service.url + "/cancel_job", json={"id": job["id"]}).json()
    assert again["state"] == "cancelled"  # idempotent


def test_kill_9_of_the_service_loses_nothing(dirs, service):
    service.stop()  # the module's instance; this test runs its own on the same data directory
    first = service_for(dirs).start()
    params = synth_params(dirs, max_steps=400, checkpoint_every=10)
    params["seed"] = 7
    job = first_job = httpx.post(
        first.url + "/submit_job", json={"type": "train-synthesizer", "params": params}
    ).json()
    checkpoints = dirs["jobs"] / job["id"]
    deadline = time.monotonic() + 120
    while not list(checkpoints.rglob("checkpoints/step-*")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert list(checkpoints.rglob("checkpoints/step-*")), "no checkpoint was written"
    first.kill()  # SIGKILL to the whole service; its job process dies with it (PR_SET_PDEATHSIG)

    second = service_for(dirs).start()
    try:
        record = httpx.post(second.url + "/get_job", json={"id": job["id"]}).json()
        assert record["id"] == first_job["id"] and record["params"]["seed"] == 7
        assert record["state"] in ("queued", "running", "succeeded")
        done = wait_for(second.url, job["id"], finished)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2 and done["result"]["resumed_from_step"] > 0
    finally:
        second.stop()
    store = ModelStore(dirs["store"])
    for stored in store.versions("synthesizer"):
        assert (stored.path / "model_card.json").is_file()
    staging = dirs["store"] / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
