"""The services benchmark's machinery (loadtests/benchmarks/services*.py), not its figures: the entry
point parses, a measured window against a real classifier service is recorded and summarised, the
report renders, and nothing under loadtests/ imports from tests/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import png_bytes, rgb

from services.harness import REPO, SERVICES

pytestmark = pytest.mark.timeout(300)


def test_the_entry_point_parses_its_options():
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.benchmarks.services", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "--variant-threads" in done.stdout and "--no-triton" in done.stdout


def test_loadtests_import_nothing_from_tests():
    for path in sorted((REPO / "loadtests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("tests", "conftest", "service_process"), path
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "tests" for a in node.names), path
        assert "spec_from_file_location" not in path.read_text(), path


def test_a_window_against_the_service_is_measured_and_reported(tmp_path, serving_classifier):
    from loadtests.benchmarks.services_classifier import CLASSIFIER_ROWS, rest_classify_client
    from loadtests.benchmarks.services_common import bench_service, run_load, summarize
    from loadtests.benchmarks.services_report import markdown

    payloads = [png_bytes(rgb(40, 40, seed)) for seed in range(4)]
    env = {
        "LESIONSYNTH_CLASSIFIER": str(serving_classifier),
        "LESIONSYNTH_MODEL_STORE": str(tmp_path / "store"),
        "LESIONSYNTH_CLASSIFIER_THREADS": "2",  # what --variant-threads sets: no generated wrapper
    }
    service = bench_service(SERVICES["classifier"].target, tmp_path / "svc", env)
    assert service.env["LESIONSYNTH_CLASSIFIER_THREADS"] == "2" and service.env["OMP_NUM_THREADS"] == "1"
    with service as svc:
        rounds = [
            run_load(
                rest_classify_client(svc.url, payloads),
                clients=2,
                warmup=0.3,
                duration=1.0,
                server_pids=[svc.proc.pid],
                metrics_url=svc.url,
            )
            for _ in range(2)
        ]
    row = summarize(rounds)
    assert row["images"] > 0 and row["errors"] == 0, row["first_error"]
    assert len(row["images_per_s_by_round"]) == 2
    assert row["server_metrics"]["mean_backend_call_ms"] > 0
    assert row["cpu_cores_used"]["server_processes"] > 0
    assert "rest_classify" in CLASSIFIER_ROWS
    environment = {
        "cpus": 2,
        "machine": "x86_64",
        "python": "3.11",
        "versions": {"bentoml": "x"},
        "load_average_at_start": [0.0],
        "load_average_at_end": [0.0],
    }
    report = markdown({"command": "c", "date": "d", "runtime_s": 1.0, "environment": environment})
    assert report.startswith("# Services benchmark")
    assert Path(svc.log_path).is_file()
