"""`make serve`'s launcher: the three services start from a model store, answer, and stop together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from service_process import REPO, free_port

from models.store import ModelStore

pytestmark = pytest.mark.timeout(300)


def test_launch_serves_all_three_and_stops_them(tmp_path, tiny_synth, serving_classifier):
    runs = tmp_path / "runs"
    store = ModelStore(runs / "model-store")
    store.publish("synthesizer", tiny_synth)
    store.publish("classifier-onnx", serving_classifier)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "OMP_NUM_THREADS": "1"}
    rest = {}
    for name in ("synthesis", "classifier", "training"):
        rest[name] = free_port()
        env[f"LESIONSYNTH_{name.upper()}_REST_PORT"] = str(rest[name])
        env[f"LESIONSYNTH_{name.upper()}_GRPC_PORT"] = str(free_port())
    env["LESIONSYNTH_DATA_ROOTS"] = str(tmp_path)
    env["LESIONSYNTH_OUTPUT_ROOT"] = str(tmp_path / "out")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.launch", "--no-bootstrap", "--runs", str(runs)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "is serving" in line or proc.poll() is not None:
                break
        assert any("is serving" in line for line in lines), "".join(lines)
        info = httpx.post(f"http://127.0.0.1:{rest['synthesis']}/info").json()
        assert info["model_version"] == store.latest("synthesizer").version
        info = httpx.post(f"http://127.0.0.1:{rest['classifier']}/info").json()
        assert (
            info["model_version"] == store.latest("classifier-onnx").version
            and info["backend"] == "onnxruntime"
        )
        assert httpx.post(f"http://127.0.0.1:{rest['training']}/list_jobs", json={}).status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for port in rest.values():
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)
