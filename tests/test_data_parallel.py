"""Data-parallel synthesizer training (torchrun, DistributedDataParallel), run for real on the CPU.

Two ranks on gloo here; NCCL on GPUs is the same code with another backend (models/distributed.py). What
must hold: the ranks draw different samples (a 2-rank run is not a 1-rank run), rank 0's checkpoints
resume every rank exactly (4 steps + resume to 8 = 8 steps, bit for bit), a resume with another process
count is refused, and the ``train-synthesizer`` job runs it through torchrun with progress and a clear
error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from models import progress
from models.distributed import DataParallel
from models.errors import ConfigError, ParameterError
from models.jobs import JOB_TYPES, JobContext, JobRoots, validate
from models.store import ModelStore
from models.torchrun import DataParallelRunFailed, torchrun_command, torchrun_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def cli_args(manifest: Path, out: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        "train-synthesizer",
        f"--manifest={manifest}",
        "--lesion-label=lesion",
        f"--out={out}",
        "--resolution=32",
        "--preset=tiny",
        "--batch-size=4",
        f"--max-steps={max_steps}",
        "--checkpoint-every=4",
        "--device=cpu",
        "--no-progress",
        *extra,
    ]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = torchrun_env(nproc, {**os.environ, "OMP_NUM_THREADS": str(nproc)})
    return subprocess.run(
        torchrun_command(nproc, args, "lesionsynth.cli"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def weights(folder: Path) -> dict:
    (path,) = (folder / "unet").glob("*.safetensors")
    return load_file(path)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_two_ranks_resume_exactly_and_differ_from_one(demo_manifest, tmp_path):
    from conftest import tiny_settings

    from models.diffusion.train import train_synthesizer

    straight = torchrun(cli_args(demo_manifest, tmp_path / "straight", 8))
    assert straight.returncode == 0, straight.stdout + straight.stderr
    first = torchrun(cli_args(demo_manifest, tmp_path / "resumed", 4))
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "resumed" / "checkpoints" / "step-000004" / "rank_generators.safetensors").is_file()
    second = torchrun(cli_args(demo_manifest, tmp_path / "resumed", 8, "--resume"))
    assert second.returncode == 0, second.stdout + second.stderr
    assert same(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    card = json.loads((tmp_path / "straight" / "model_card.json").read_text())
    assert card["processes"] == 2 and card["batch_size"] == 4 and card["steps"] == 8
    assert "wrote" in straight.stdout and straight.stdout.count("wrote") == 1  # rank 0 reports, once

    one = tmp_path / "one"
    train_synthesizer(tiny_settings(demo_manifest, one, max_steps=8, checkpoint_every=4))
    assert json.loads((one / "model_card.json").read_text())["processes"] == 1
    assert not same(weights(one), weights(tmp_path / "straight"))  # rank 1 drew other regions and noise

    # Another process count cannot continue these checkpoints: the ranks' data streams would not match.
    other = tmp_path / "other"
    train_synthesizer(tiny_settings(demo_manifest, other, max_steps=4, checkpoint_every=4))
    refused = torchrun(cli_args(demo_manifest, other, 8, "--resume"))
    assert refused.returncode != 0
    assert "error: cannot resume: the checkpoint was made with different processes" in refused.stderr


def test_the_job_trains_on_two_processes_and_reports_progress(demo_manifest, tmp_path):
    roots = JobRoots((demo_manifest.parent,), tmp_path / "out")
    params = validate(
        "train-synthesizer",
        {
            "manifest": str(demo_manifest),
            "lesion_label": "lesion",
            "resolution": 32,
            "preset": "tiny",
            "batch_size": 2,
            "max_steps": 6,
            "checkpoint_every": 3,
            "device": "cpu",
            "processes": 2,
        },
        roots,
    )
    store = ModelStore(tmp_path / "store")
    ctx = JobContext("job1", tmp_path / "work", store, roots.output_root)
    calls = []
    previous = progress.set_sink(lambda desc, n, total: calls.append((desc, n, total)))
    try:
        result = JOB_TYPES["train-synthesizer"].run(params, ctx)
    finally:
        progress.set_sink(previous)
    assert result["processes"] == 2 and result["steps"] == 6
    assert store.resolve("synthesizer", result["version"]).path == Path(result["path"])
    assert ("train synthesizer", 6.0, 6.0) in calls  # rank 0's bar, relayed to the job's sink

    with pytest.raises(DataParallelRunFailed, match=r"2 processes failed: .*label 'tumour'"):
        JOB_TYPES["train-synthesizer"].run({**params, "lesion_label": "tumour"}, ctx)


def test_validation_of_processes(demo_manifest, tmp_path):
    roots = JobRoots((demo_manifest.parent,), tmp_path / "out")
    base = {"manifest": str(demo_manifest), "lesion_label": "lesion"}
    assert validate("train-synthesizer", base, roots)["processes"] == 1
    assert validate("train-synthesizer", {**base, "processes": 4, "device": "cuda"}, roots)["processes"] == 4
    with pytest.raises(ParameterError, match="device must be 'cuda', 'cpu' or unset when processes > 1"):
        validate("train-synthesizer", {**base, "processes": 2, "device": "cuda:1"}, roots)
    with pytest.raises(ParameterError, match="processes"):
        validate("train-synthesizer", {**base, "processes": 0}, roots)


def test_data_parallel_context_from_the_torchrun_environment():
    assert not DataParallel.from_env({}).enabled and DataParallel.from_env({}).is_main
    dp = DataParallel.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert dp.enabled and not dp.is_main
    assert DataParallel(rank=0, world_size=2).rank_seed(7) == 7  # rank 0 keeps the run's seed
    seeds = {DataParallel(rank=r, world_size=4).rank_seed(7) for r in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(ConfigError, match="torchrun environment"):
            DataParallel.from_env(bad)


def test_torchrun_command_runs_this_interpreter():
    command = torchrun_command(3, ["train-synthesizer"], "lesionsynth.cli")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in command and "--max-restarts=0" in command
    assert command[-3:] == ["-m", "lesionsynth.cli", "train-synthesizer"]


def test_cancelling_a_data_parallel_job_stops_every_rank(demo_manifest, tmp_path):
    """Through the training service's scheduler and a real job process: torchrun and both ranks are in
    the job's process group, so a cancel leaves no rank running."""
    import time

    from services.training.executor import processes_of_job
    from services.training.scheduler import JobScheduler

    roots = JobRoots((demo_manifest.parent,), tmp_path / "out")
    scheduler = JobScheduler.local(
        tmp_path / "jobs", roots, tmp_path / "store", poll_seconds=0.05, stop_grace_seconds=10.0
    )
    scheduler.start()
    try:
        params = {
            "manifest": str(demo_manifest),
            "lesion_label": "lesion",
            "resolution": 32,
            "preset": "tiny",
            "batch_size": 2,
            "max_steps": 1_000_000,
            "device": "cpu",
            "processes": 2,
        }
        job = scheduler.submit("train-synthesizer", params)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            record = scheduler.get(job.id)
            if record.stage == "train synthesizer" and record.progress > 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no training progress: {scheduler.logs(job.id)[-3000:]}")
        ranks = [
            pid
            for pid in processes_of_job(job.id)
            if b"models.jobs.synthesizer_ranks" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(ranks) >= 3, "torchrun and its two ranks"  # torchrun + 2 rank processes
        scheduler.cancel(job.id)
        while time.monotonic() < deadline and scheduler.get(job.id).state == "running":
            time.sleep(0.1)
        assert scheduler.get(job.id).state == "cancelled"
        deadline = time.monotonic() + 15
        while processes_of_job(job.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_of_job(job.id) == []
    finally:
        scheduler.stop()


def test_a_killed_job_process_leaves_no_rank_behind(demo_manifest, tmp_path):
    """SIGKILL of the job process alone (not its group, as an OOM kill would): torchrun gets SIGTERM from
    the kernel (PR_SET_PDEATHSIG) and stops both ranks."""
    import signal
    import time
    import uuid

    from services.training.executor import JOB_ENV, processes_of_job

    marker = f"test-{uuid.uuid4().hex}"
    progress_file = tmp_path / "progress.json"
    script = (
        "import sys; from models.torchrun import run_data_parallel; "
        "run_data_parallel(2, sys.argv[1:], sys.argv[0], 'lesionsynth.cli')"
    )
    args = cli_args(demo_manifest, tmp_path / "model", 1_000_000)
    job = subprocess.Popen(
        [sys.executable, "-c", script.replace("sys.argv[0]", repr(str(progress_file))), *args],
        cwd=REPO,
        env={**os.environ, JOB_ENV: marker, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not progress_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert progress_file.exists(), "rank 0 never reported progress"
        assert len(processes_of_job(marker)) >= 4  # the job process, torchrun, 2 ranks
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        deadline = time.monotonic() + 30
        while processes_of_job(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_of_job(marker) == []
    finally:
        for pid in processes_of_job(marker):
            os.kill(pid, signal.SIGKILL)
