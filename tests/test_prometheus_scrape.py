"""A real Prometheus server scrapes the three running services; queries return their request counters
and domain metrics. (The rules and configs in deploy/prometheus are checked with promtool elsewhere.)"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
from conftest import png_bytes
from service_process import ServiceProcess, free_port

pytestmark = pytest.mark.timeout(600)


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_scrapes_the_three_services(tmp_path, tiny_synth, serving_classifier, normal_pair):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install -y prometheus (make test's CI step installs it)")
    store = tmp_path / "store"
    services = {
        "synthesis": ServiceProcess(
            "services.synthesis.service:SynthesisService",
            tmp_path / "synthesis",
            {"LESIONSYNTH_SYNTHESIZER": str(tiny_synth), "LESIONSYNTH_MODEL_STORE": str(store)},
        ),
        "classifier": ServiceProcess(
            "services.classifier.service:ClassifierService",
            tmp_path / "classifier",
            {"LESIONSYNTH_CLASSIFIER": str(serving_classifier), "LESIONSYNTH_MODEL_STORE": str(store)},
        ),
        "training": ServiceProcess(
            "services.training.service:TrainingService",
            tmp_path / "training",
            {
                "LESIONSYNTH_DATA_ROOTS": str(tmp_path),
                "LESIONSYNTH_OUTPUT_ROOT": str(tmp_path / "out"),
                "LESIONSYNTH_JOBS_DIR": str(tmp_path / "jobs"),
                "LESIONSYNTH_MODEL_STORE": str(store),
            },
        ),
    }
    prom_port = free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    config = tmp_path / "prometheus.yml"
    server = None
    try:
        for svc in services.values():
            svc.start()
        # Written after the starts: a start that loses a port race moves to new ports.
        targets = ", ".join(f"'127.0.0.1:{s.rest_port}'" for s in services.values())
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: lesionsynth\n    static_configs:\n      - targets: [{targets}]\n"
        )
        image, mask = normal_pair
        files = {"image": ("i.png", png_bytes(image), "image/png")}
        r = httpx.post(
            services["synthesis"].url + "/synthesize",
            files={**files, "mask": ("m.png", png_bytes(mask.astype(np.uint8) * 255), "image/png")},
            data={"steps": "2", "seed": "1"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert (
            httpx.post(services["classifier"].url + "/classify", files=files, timeout=60).status_code == 200
        )
        assert httpx.post(services["training"].url + "/list_jobs", json={}).status_code == 200

        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("wb"),
        )
        wanted = {
            "bentoml_service_request_total": lambda rows: (
                {r["metric"]["instance"] for r in rows}
                == {f"127.0.0.1:{s.rest_port}" for s in services.values()}
            ),
            "lesionsynth_synthesis_images_total": lambda rows: sum(float(r["value"][1]) for r in rows) >= 1,
            "lesionsynth_classifier_decisions_total": lambda rows: (
                sum(float(r["value"][1]) for r in rows) >= 1
            ),
            "lesionsynth_model_info": lambda rows: (
                {r["metric"]["service"] for r in rows} == {"synthesis", "classifier"}
            ),
            "lesionsynth_jobs_queued": lambda rows: len(rows) == 1,
        }
        deadline, missing = time.monotonic() + 60, set(wanted)
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            for name in sorted(missing):
                try:
                    if wanted[name](query(prom, name)):
                        missing.discard(name)
                except httpx.HTTPError:
                    break
        assert not missing, (
            f"Prometheus never saw {missing}: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        )
        up = query(prom, 'up{job="lesionsynth"}')
        assert len(up) == 3 and all(r["value"][1] == "1" for r in up)
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        for svc in services.values():
            svc.stop()
