"""The gpu-check's CPU path (issue 14, section 4): it says there is no GPU, measures nothing, exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loadtests.benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: this machine has a GPU")


def test_no_gpu_run_reports_and_measures_nothing(tmp_path):
    docs = REPO / "docs" / "benchmarks"
    before = {p.name: p.stat().st_mtime_ns for p in docs.glob("gpu.*")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.benchmarks.gpu_check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == gpu_check.EXIT_NO_GPU == 0, done.stderr
    assert gpu_check.NO_GPU in done.stdout
    assert "torch.cuda.is_available() = False" in done.stdout and torch.__version__ in done.stdout
    assert {
        p.name: p.stat().st_mtime_ns for p in docs.glob("gpu.*")
    } == before  # nothing written without --out


def test_no_gpu_with_out_writes_the_outcome(tmp_path, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("measured on a machine without a GPU")

    for name in ("measure_recipe", "measure_unet", "measure_classifier", "measure_ddp", "demo_manifest"):
        monkeypatch.setattr(gpu_check, name, forbidden)
    assert gpu_check.main(["--out", str(tmp_path)]) == gpu_check.EXIT_NO_GPU
    summary = json.loads((tmp_path / "gpu.json").read_text())
    assert summary["measured"] is False and summary["outcome"] == gpu_check.NO_GPU
    assert summary["machine"]["cuda_available"] is False and summary["machine"]["torch"] == torch.__version__
    assert "figures" not in summary
    assert gpu_check.NO_GPU in (tmp_path / "gpu.md").read_text()
    assert gpu_check.NO_GPU in capsys.readouterr().out


def test_compare_with_cpu_on_fake_figures(tmp_path):
    cpu = {
        "training": {"images_per_s": {"plain": [40.0, 44.0, 42.0], "recipe": [30.0, 20.0, 40.0]}},
        "data_parallel": {"images_per_s": {"ddp": [50.0], "single": [45.0]}},
    }
    gpu = {"recipe_images_per_s": 300.0, "unet_crops_per_s": 4200.0, "ddp_images_per_s": 250.0}
    rows = {r["what"].split(",")[0]: r for r in gpu_check.compare_with_cpu(gpu, cpu)}
    assert rows["synthesizer recipe"]["cpu"] == 30.0 and rows["synthesizer recipe"]["ratio"] == 10.0
    assert rows["UNet fwd+bwd"]["cpu"] == 42.0 and rows["UNet fwd+bwd"]["ratio"] == 100.0
    assert rows["DDP train-synthesizer"]["ratio"] == 5.0
    # a figure without a CPU counterpart (or a failed GPU part) gives no row
    assert gpu_check.compare_with_cpu({"unet_crops_per_s": 1.0}, {}) == []
    assert len(gpu_check.compare_with_cpu({"unet_crops_per_s": 84.0}, cpu)) == 1
    # the committed figures are read from a docs folder
    (tmp_path / "training.json").write_text(json.dumps(cpu["training"]))
    assert gpu_check.cpu_figures(tmp_path) == {"training": cpu["training"]}
