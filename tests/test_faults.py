"""Faults (issue 6, the short versions CI runs): kill -9 of each service under load, a write error while
an artifact is written, a corrupted model. Triton going away is in test_classifier_service.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import png_bytes
from service_process import REPO, ServiceProcess

from models.model_card import CARD_NAME, verify_files
from models.store import ModelStore

pytestmark = pytest.mark.timeout(600)


class Load:
    """Background clients sending ``request()`` in a loop; counts answers by status (or 'conn' errors)."""

    def __init__(self, request, clients: int = 4):
        self.request, self.outcomes, self.stop = request, {}, threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self):
        while not self.stop.is_set():
            try:
                key = self.request().status_code
            except httpx.HTTPError:
                key = "conn"
                time.sleep(0.05)
            with self.lock:
                self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def kill_under_load_and_restart(svc: ServiceProcess, request) -> dict:
    with Load(request) as load:
        time.sleep(3)
        before = dict(load.outcomes)
        svc.kill()  # SIGKILL to the whole process tree, as the OOM killer or a node loss would
        time.sleep(1)
        svc.start()  # what the orchestrator does; the same data directories
        time.sleep(2)
    assert before.get(200, 0) > 0, before
    assert not any(isinstance(k, int) and k >= 500 for k in load.outcomes), load.outcomes
    return load.outcomes


@pytest.mark.parametrize("name", ["synthesis", "classifier"])
def test_kill_9_under_load_the_model_services_come_back(
    name, tmp_path, tiny_synth, serving_classifier, normal_pair
):
    store = ModelStore(tmp_path / "store")
    image, mask = normal_pair
    if name == "synthesis":
        stored = store.publish("synthesizer", tiny_synth)
        target, env = "services.synthesis.service:SynthesisService", {}
        files = {
            "image": ("i.png", png_bytes(image)),
            "mask": ("m.png", png_bytes(mask.astype(np.uint8) * 255)),
        }
        path, data = "/synthesize", {"steps": "2"}
    else:
        stored = store.publish("classifier-onnx", serving_classifier)
        target, env = "services.classifier.service:ClassifierService", {}
        files, path, data = {"image": ("i.png", png_bytes(image))}, "/classify", {}
    env.update({"LESIONSYNTH_MODEL_STORE": str(store.root)})
    with ServiceProcess(target, tmp_path / "svc", env) as svc:
        outcomes = kill_under_load_and_restart(
            svc, lambda: httpx.post(svc.url + path, files=files, data=data, timeout=30)
        )
        assert outcomes.get(200, 0) > 0
        assert httpx.post(svc.url + path, files=files, data=data, timeout=30).status_code == 200
        assert httpx.post(svc.url + "/info").json()["model_version"] == stored.version
    verify_files(stored.path, json.loads((stored.path / CARD_NAME).read_text()))  # the store is intact


def test_kill_9_under_load_the_training_service_loses_no_acknowledged_job(tmp_path, demo_manifest):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_manifest.parent, data)
    env = {
        "LESIONSYNTH_DATA_ROOTS": str(data),
        "LESIONSYNTH_OUTPUT_ROOT": str(tmp_path / "out"),
        "LESIONSYNTH_JOBS_DIR": str(tmp_path / "jobs"),
        "LESIONSYNTH_MODEL_STORE": str(tmp_path / "store"),
    }
    params = {
        "manifest": str(data / "manifest.csv"),
        "lesion_label": "lesion",
        "resolution": 32,
        "preset": "tiny",
    }
    params.update(max_steps=100000, batch_size=4, checkpoint_every=20)
    acknowledged: list[str] = []
    with ServiceProcess("services.training.service:TrainingService", tmp_path / "svc", env) as svc:

        def submit():
            r = httpx.post(
                svc.url + "/submit_job", json={"type": "train-synthesizer", "params": params}, timeout=30
            )
            if r.status_code == 200:
                acknowledged.append(r.json()["id"])
            return r

        kill_under_load_and_restart(svc, submit)
        listed = {j["id"] for j in httpx.post(svc.url + "/list_jobs", json={"limit": 1000}).json()}
        assert set(acknowledged) <= listed, set(acknowledged) - listed
        for job_id in acknowledged[:3]:
            httpx.post(svc.url + "/cancel_job", json={"id": job_id})
    with sqlite3.connect(tmp_path / "jobs" / "jobs.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(acknowledged) > 3


def run_with_file_size_limit(code: str, limit_bytes: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python whose writes fail past ``limit_bytes`` (EFBIG, as on a full disk)."""
    prelude = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_a_write_error_while_publishing_leaves_no_partial_model(tmp_path, tiny_synth):
    store_root = tmp_path / "store"
    code = (
        "from models.store import ModelStore\n"
        "from models.errors import StorageError\n"
        "try:\n"
        f"    ModelStore({str(store_root)!r}).publish('synthesizer', {str(tiny_synth)!r})\n"
        "except StorageError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = run_with_file_size_limit(code, 50_000)  # the tiny UNet's weights are ~0.7 MB
    assert "REFUSED cannot write synthesizer" in result.stdout, result.stdout + result.stderr
    assert "file too large" in result.stdout
    store = ModelStore(store_root)
    assert store.versions("synthesizer") == [] and store.latest("synthesizer") is None
    assert not any((store_root / ".staging").iterdir())
    # With room again the same publish succeeds: nothing half-written was left in the way.
    assert store.publish("synthesizer", tiny_synth).version


def test_a_write_error_during_training_fails_clearly_without_a_partial_model(tmp_path, demo_manifest):
    out = tmp_path / "model"
    cli = [sys.executable, "-m", "lesionsynth.cli", "train-synthesizer", "--manifest", str(demo_manifest)]
    cli += ["--lesion-label", "lesion", "--out", str(out), "--resolution", "32", "--preset", "tiny"]
    cli += ["--max-steps", "4", "--batch-size", "2"]
    code = f"import sys, runpy\nsys.argv = {cli[2:]!r}\nsys.argv[0] = 'lesionsynth'\nrunpy.run_module('lesionsynth.cli', run_name='__main__')\n"
    result = run_with_file_size_limit(code, 50_000)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot write" in result.stderr and "file too large" in result.stderr, result.stderr[-2000:]
    assert not (out / CARD_NAME).exists()  # no model: the card is written last
    assert not [p for p in Path(out).rglob("*.tmp")]  # no temp file left behind


def test_a_corrupted_model_is_refused_with_the_reason(tmp_path, serving_classifier):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(serving_classifier, copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-10] + b"0123456789")
    env = {"LESIONSYNTH_CLASSIFIER": str(copy), "LESIONSYNTH_MODEL_STORE": str(tmp_path / "store")}
    svc = ServiceProcess("services.classifier.service:ClassifierService", tmp_path / "svc", env)
    with pytest.raises(RuntimeError, match="exited") as err:
        svc.start(timeout=60)
    assert "model.onnx fails its sha256 check" in str(err.value)
