"""Training jobs: parameter validation, progress, the job database, and real job processes.

The process tests run the real worker (``python -m services.training.worker``) on a tiny synthesizer
(32 px, the ``tiny`` UNet), against a real SQLite database, and kill processes for real: a job killed by
SIGKILL is failed with the reason, a cancelled job ends cancelled, and a service killed with kill -9
mid-job takes its job down with it (parent-death signal) and, once restarted, resumes the job from its
checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models import progress
from models.errors import ConfigError, ModelFolderError, ParameterError
from models.jobs import JOB_TYPES, JobContext, JobRoots, validate
from models.store import ModelStore
from services.training.executor import _alive, exit_reason
from services.training.jobstore import JobStore, UnknownJobError
from services.training.scheduler import DataDirLock, JobScheduler

REPO = Path(__file__).resolve().parents[1]


def synth_params(manifest: Path, max_steps: int, checkpoint_every: int = 8) -> dict:
    return {
        "manifest": str(manifest),
        "lesion_label": "lesion",
        "resolution": 32,
        "preset": "tiny",
        "batch_size": 4,
        "max_steps": max_steps,
        "checkpoint_every": checkpoint_every,
        "device": "cpu",
    }


@pytest.fixture()
def roots(demo_manifest, tmp_path) -> JobRoots:
    return JobRoots((demo_manifest.parent,), tmp_path / "out")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- validation -------------------------------------------------------------------------------------


def test_valid_params_are_normalised(roots, demo_manifest):
    params = validate("train-synthesizer", synth_params(demo_manifest, 24), roots)
    assert params["manifest"] == str(demo_manifest.resolve())
    assert params["learning_rate"] == 2e-4 and params["mask_conditioning"] is False and params["seed"] == 0
    relative = validate(
        "train-synthesizer", {**synth_params(demo_manifest, 24), "manifest": "manifest.csv"}, roots
    )
    assert relative["manifest"] == str(demo_manifest.resolve())  # relative to the first data root
    assert validate("export", {}, roots)["model"] == "latest"


@pytest.mark.parametrize(
    "job, change, message",
    [
        ("train-synthesizer", {"max_step": 10}, r"params: unknown field\(s\) 'max_step'"),
        (
            "train-synthesizer",
            {"manifest": "/etc/hosts"},
            r"params.manifest: /etc/hosts is outside the data roots",
        ),
        (
            "train-synthesizer",
            {"manifest": "../../../../etc/hosts"},
            r"params.manifest: .* is outside the data roots",
        ),
        ("train-synthesizer", {"manifest": "missing.csv"}, r"params.manifest: no such file"),
        ("train-synthesizer", {"max_steps": True}, r"params.max_steps must be an integer"),
        ("train-synthesizer", {"max_steps": 10.0}, r"params.max_steps must be an integer"),
        ("train-synthesizer", {"batch_size": 0}, r"params.batch_size must be in \[1, 1024\]"),
        ("train-synthesizer", {"preset": "huge"}, r"params.preset must be one of tiny, small, base"),
        ("train-synthesizer", {"learning_rate": 0}, r"params.learning_rate must be in \(0, 1\], got 0"),
        ("train-synthesizer", {"lesion_label": None}, r"params.lesion_label is required"),
        ("train-synthesizer", {"device": "tpu"}, r"params.device must be 'cpu', 'cuda'"),
        ("train-synthesizer", {"seed": -1}, r"params.seed must be in \[0, 2\^63 - 1\], got -1"),
        ("train-synthesizer", {"num_classes": 1}, r"params.num_classes must be one of 0, 2"),
        ("train-synthesizer", {"num_classes": 2}, r"params.normal_label is required"),
        (
            "train-synthesizer",
            {"num_classes": 2, "normal_label": "normal", "all_regions": True},
            r"params.all_regions is for unconditional pre-training",
        ),
        ("train-synthesizer", {"init_from": "/etc"}, r"params.init_from: /etc is outside the data roots"),
    ],
)
def test_bad_params_name_the_field(roots, demo_manifest, job, change, message):
    params = {**synth_params(demo_manifest, 24), **change}
    params = {k: v for k, v in params.items() if not (k == "lesion_label" and v is None)}
    with pytest.raises(ParameterError, match=message):
        validate(job, params, roots)


def test_synthesizer_variants_reach_the_recipe(roots, demo_manifest, tiny_synth):
    """The job's class-conditional and pre-train/fine-tune params become the recipe's settings."""
    from models.jobs.train_synthesizer import _settings

    conditional = validate(
        "train-synthesizer",
        {**synth_params(demo_manifest, 24), "num_classes": 2, "normal_label": "normal", "label_dropout": 0.2},
        roots,
    )
    s = _settings(conditional, Path("out"))
    assert s.config.num_classes == 2 and s.normal_label == "normal" and s.label_dropout == 0.2
    assert s.init_from is None and s.all_regions is False
    tuned = _settings(
        {
            **validate("train-synthesizer", synth_params(demo_manifest, 24), roots),
            "init_from": str(tiny_synth),
            "all_regions": True,
        },
        Path("out"),
    )
    assert tuned.init_from == tiny_synth and tuned.all_regions and tuned.config.num_classes == 0


def test_other_bad_requests(roots, demo_manifest, tmp_path):
    with pytest.raises(ParameterError, match="unknown job type 'train-gan'; choose one of train-synthesizer"):
        validate("train-gan", {}, roots)
    with pytest.raises(ParameterError, match="params must be a JSON object"):
        validate("export", [1, 2], roots)
    balance = {
        "manifest": str(demo_manifest),
        "normal_label": "lesion",
        "lesion_label": "lesion",
        "count": 3,
    }
    with pytest.raises(ParameterError, match="params.lesion_label must differ from params.normal_label"):
        validate("balance", balance, roots)
    with pytest.raises(ParameterError, match="params.count must be an integer"):
        validate("balance", {**balance, "normal_label": "normal", "count": "3"}, roots)
    with pytest.raises(ParameterError, match="params.model: /etc is outside the data roots"):
        validate("export", {"model": "/etc"}, roots)
    with pytest.raises(ParameterError, match="params.instance_kind must be one of gpu, cpu"):
        validate("export", {"instance_kind": "tpu"}, roots)


def test_a_symlink_out_of_the_data_root_is_refused(tmp_path, demo_manifest):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").symlink_to(demo_manifest)  # inside by name, outside in fact
    roots = JobRoots((data,), tmp_path / "out")
    with pytest.raises(ParameterError, match="params.manifest: .* is outside the data roots"):
        validate("train-synthesizer", {**synth_params(demo_manifest, 8), "manifest": "manifest.csv"}, roots)


def test_experiment_params(roots, demo_manifest):
    config = {
        "name": "t",
        "manifest": str(demo_manifest),
        "positive_label": "lesion",
        "normal_label": "normal",
        "strategies": ["none"],
        "seeds": [0],
    }
    assert validate("experiment", {"config": config}, roots)["config"]["manifest"] == str(demo_manifest)
    with pytest.raises(
        ParameterError, match=r"params.config.out: the output folder is chosen by the service"
    ):
        validate("experiment", {"config": {**config, "out": "/tmp/x"}}, roots)
    with pytest.raises(ParameterError, match=r"params.config: unknown strategies \['bogus'\]"):
        validate("experiment", {"config": {**config, "strategies": ["none", "bogus"]}}, roots)
    with pytest.raises(ParameterError, match=r"params.config.manifest: /etc/hosts is outside the data roots"):
        validate("experiment", {"config": {**config, "manifest": "/etc/hosts"}}, roots)
    with pytest.raises(
        ParameterError, match=r"params.config.synthesizer.model: .* holds no finished synthesizer"
    ):
        validate("experiment", {"config": {**config, "synthesizer": {"model": "nowhere"}}}, roots)
    # A benchmark's role file is read by the job: it must lie inside the data roots, and exist.
    roles = {"roles": {"a": "train", "t": "test"}}
    with pytest.raises(
        ParameterError, match=r"params.config.split.file: /etc/passwd is outside the data roots"
    ):
        validate("experiment", {"config": {**config, "split": {"file": "/etc/passwd", **roles}}}, roots)
    with pytest.raises(ParameterError, match=r"params.config.split.file: no such file: roles.csv"):
        validate("experiment", {"config": {**config, "split": {"file": "roles.csv", **roles}}}, roots)


def test_importing_the_jobs_does_not_load_torch():
    code = "import sys, models.jobs, services.training.scheduler; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


# -- progress ---------------------------------------------------------------------------------------


def test_progress_reaches_the_sink_throttled_with_the_final_update():
    calls = []
    previous = progress.set_sink(lambda desc, n, total: calls.append((desc, n, total)))
    try:
        for _ in progress.tqdm(range(50), desc="quiet loop", disable=True):
            pass
        bar = progress.tqdm(total=10, desc="manual", disable=True)
        for _ in range(10):
            bar.update(1)
        bar.close()
        for _ in progress.tqdm(range(20), desc="drawn", file=io.StringIO(), mininterval=0):
            pass
    finally:
        progress.set_sink(previous)
    assert ("quiet loop", 50, 50) in calls and ("manual", 10, 10) in calls and calls[-1] == ("drawn", 20, 20)
    assert len(calls) <= 5  # throttled: not one call per update


def test_a_failing_sink_does_not_stop_the_work():
    def broken(desc, n, total):
        raise sqlite3.OperationalError("database is locked")

    previous = progress.set_sink(broken)
    try:
        assert sum(1 for _ in progress.tqdm(range(5), disable=True)) == 5
    finally:
        progress.set_sink(previous)


# -- the job database -------------------------------------------------------------------------------


def test_jobstore_lifecycle_and_recovery(tmp_path):
    jobs = JobStore(tmp_path / "jobs.db")
    a = jobs.create("train-synthesizer", {"n": 1})
    b = jobs.create("balance", {"n": 2})
    c = jobs.create("export", {"n": 3})
    d = jobs.create("export", {"n": 4})
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert jobs.request_cancel(d.id).state == "cancelled"  # queued: cancelled at once
    assert [jobs.claim_next_queued().id for _ in range(3)] == [a.id, b.id, c.id]
    assert jobs.claim_next_queued() is None
    jobs.set_running(a.id, 4242)
    jobs.update_progress(a.id, "train synthesizer", 0.5)
    other = JobStore(tmp_path / "jobs.db")  # as the worker process opens it
    assert (other.get(a.id).stage, other.get(a.id).progress, other.get(a.id).pid) == (
        "train synthesizer",
        0.5,
        4242,
    )
    assert other.finish(c.id, "failed", error="manifest: 2 problem(s):\n  - row 2: bad\n  - row 3: bad")
    assert jobs.get(c.id).error == "manifest: 2 problem(s): - row 2: bad - row 3: bad"
    assert not jobs.finish(c.id, "succeeded") and jobs.get(c.id).state == "failed"  # ended once
    assert jobs.request_cancel(c.id).state == "failed"  # idempotent on finished jobs

    touched = jobs.recover_after_restart({"train-synthesizer"}, max_attempts=2)
    assert sorted(touched) == sorted([a.id, b.id])
    a2, b2 = jobs.get(a.id), jobs.get(b.id)
    assert (a2.state, a2.attempts, a2.stage, a2.pid) == ("queued", 2, "resuming after restart", None)
    assert b2.state == "interrupted" and "balance jobs cannot be resumed" in b2.error
    assert jobs.claim_next_queued().id == a.id
    jobs.recover_after_restart({"train-synthesizer"}, max_attempts=2)
    assert jobs.get(a.id).state == "interrupted" and "2 times" in jobs.get(a.id).error

    assert [j.id for j in jobs.list(state="cancelled")] == [d.id]
    assert len(jobs.list(type="export")) == 2 and len(jobs.list(limit=1)) == 1
    assert jobs.counts()[("export", "cancelled")] == 1
    with pytest.raises(UnknownJobError, match="no job with id 'nope'"):
        jobs.request_cancel("nope")
    with pytest.raises(ValueError, match="final state"):
        jobs.finish(a.id, "running")


def test_data_directory_lock(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(ConfigError, match="another training service is using"):
        DataDirLock(tmp_path).acquire()
    first.release()
    DataDirLock(tmp_path).acquire()


def test_exit_reasons():
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL (out of memory?)"
    assert exit_reason(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert exit_reason(3) == "exited with code 3"


def test_the_worker_records_user_errors_and_bugs(tmp_path, roots, demo_manifest, monkeypatch, capsys):
    """worker.main in-process (its parent-death setup skipped): the one-line reasons it records."""
    import dataclasses

    from models.jobs import JOB_TYPES as registry
    from services.training import worker

    monkeypatch.setattr(worker, "die_with_parent", lambda parent_pid: None)
    jobs = JobStore(tmp_path / "jobs.db")

    def argv(job_id: str) -> list[str]:
        return [
            *("--db", str(tmp_path / "jobs.db"), "--job", job_id, "--jobs-dir", str(tmp_path / "jobs")),
            *("--store", str(tmp_path / "store"), "--output-root", str(roots.output_root)),
        ]

    queued = jobs.create("export", {"model": "latest"})
    assert worker.main(argv(queued.id)) == worker.EXIT_NOT_RUNNABLE  # not claimed: not this worker's to run

    params = validate(
        "train-synthesizer", {**synth_params(demo_manifest, 8), "lesion_label": "melanoma"}, roots
    )
    user_error = jobs.create("train-synthesizer", params)
    jobs.claim_next_queued()  # queued export
    jobs.claim_next_queued()
    assert worker.main(argv(user_error.id)) == worker.EXIT_FAILED
    assert jobs.get(user_error.id).state == "failed"
    assert jobs.get(user_error.id).error.startswith("label 'melanoma' does not occur in the manifest")

    def bug(params, ctx):
        return {}["missing"]

    monkeypatch.setitem(registry, "export", dataclasses.replace(registry["export"], run=bug))
    assert worker.main(argv(queued.id)) == worker.EXIT_FAILED
    assert jobs.get(queued.id).error == "internal error: KeyError (see the job log)"
    assert "Traceback" in capsys.readouterr().err


# -- job functions in-process -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_classifier_export_and_balance_jobs(tmp_path, roots, demo_manifest, tiny_synth):
    store = ModelStore(tmp_path / "store")

    def ctx(job_id: str) -> JobContext:
        return JobContext(job_id, tmp_path / "jobs" / job_id / "work", store, roots.output_root)

    params = validate(
        "train-classifier",
        {
            "manifest": str(demo_manifest),
            "positive_label": "lesion",
            "arch": "resnet18",
            "image_size": 32,
            "epochs": 1,
            "batch_size": 16,
            "device": "cpu",
        },
        roots,
    )
    clf = JOB_TYPES["train-classifier"].run(params, ctx("c1"))
    assert clf["kind"] == "classifier" and store.latest("classifier").version == clf["version"]
    assert not (tmp_path / "jobs" / "c1" / "work" / "model" / "checkpoints").exists()

    exported = JOB_TYPES["export"].run(validate("export", {"instance_kind": "cpu"}, roots), ctx("e1"))
    from models.export.serving import read_card
    from models.model_card import verify_files

    card = read_card(exported["path"])
    verify_files(Path(exported["path"]), card)
    assert exported["source_model_version"] == clf["version"] == card["source_model_version"]

    with pytest.raises(ModelFolderError, match="no synthesizer model has been published"):
        JOB_TYPES["balance"].run(
            validate(
                "balance",
                {
                    "manifest": str(demo_manifest),
                    "normal_label": "normal",
                    "lesion_label": "lesion",
                    "count": 2,
                },
                roots,
            ),
            ctx("b0"),
        )
    synth = store.publish("synthesizer", tiny_synth)
    balance = validate(
        "balance",
        {
            "manifest": str(demo_manifest),
            "normal_label": "normal",
            "lesion_label": "lesion",
            "count": 2,
            "steps": 2,
        },
        roots,
    )
    result = JOB_TYPES["balance"].run(balance, ctx("b1"))
    manifest = Path(result["manifest"])
    assert manifest.parent == roots.output_root / "b1" and result["synthesizer_version"] == synth.version
    assert sum(",1," in line for line in manifest.read_text().splitlines()) >= 2
    assert JOB_TYPES["balance"].run(balance, ctx("b1")) == result  # a rerun resumes (nothing left to do)


@pytest.mark.timeout(120)
def test_experiment_job_writes_under_the_output_root(tmp_path, demo_manifest):
    data = tmp_path / "configs"
    data.mkdir()
    roots = JobRoots((data, demo_manifest.parent), tmp_path / "out")
    config = {
        "name": "tiny",
        "manifest": str(demo_manifest),
        "positive_label": "lesion",
        "normal_label": "normal",
        "strategies": ["none"],
        "seeds": [0],
        "classifier": {"arch": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 16},
    }
    (data / "tiny.yaml").write_text(json.dumps({**config, "out": "/somewhere/else"}))  # JSON is YAML
    assert validate("experiment", {"config": "tiny.yaml"}, roots) == {"config": str(data / "tiny.yaml")}

    params = validate("experiment", {"config": config}, roots)
    ctx = JobContext(
        "x1", tmp_path / "jobs" / "x1" / "work", ModelStore(tmp_path / "store"), roots.output_root
    )
    result = JOB_TYPES["experiment"].run(params, ctx)
    assert result["out"] == str(roots.output_root / "x1") and Path(result["report"]).is_file()
    assert set(result["strategies"]) == {"none"}
    assert JOB_TYPES["experiment"].run(params, ctx) == result  # a rerun reuses the finished units


# -- real job processes -----------------------------------------------------------------------------


@pytest.fixture()
def service(tmp_path, roots, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scheduler = JobScheduler.local(
        tmp_path / "jobs", roots, tmp_path / "store", poll_seconds=0.05, stop_grace_seconds=5.0
    )
    scheduler.start()
    yield scheduler
    scheduler.stop()


def finished(scheduler: JobScheduler, job_id: str, timeout: float = 90.0):
    return wait_for(lambda: (job := scheduler.get(job_id)).finished and job, timeout, f"job {job_id} to end")


def first_checkpoint(jobs_dir: Path, job_id: str, timeout: float = 60.0) -> Path:
    root = jobs_dir / job_id / "work" / "model" / "checkpoints"
    return wait_for(
        lambda: next(iter(sorted(root.glob("step-*/state.json"))), None) if root.is_dir() else None,
        timeout,
        "the first checkpoint",
    )


def assert_no_partial_models(store_root: Path) -> None:
    staging = store_root / ".staging"
    assert not staging.exists() or not list(staging.iterdir())
    store = ModelStore(store_root)
    for model in store.versions("synthesizer"):
        from models.diffusion.folder import load_synthesizer

        load_synthesizer(model.path, verify=True)


@pytest.mark.timeout(120)
def test_a_job_runs_in_its_own_process_and_publishes(service, demo_manifest, tmp_path):
    job = service.submit("train-synthesizer", synth_params(demo_manifest, 16))
    assert job.state == "queued"
    done = finished(service, job.id)
    assert done.state == "succeeded", service.logs(job.id)
    result = done.result
    assert result["kind"] == "synthesizer" and result["steps"] == 16 and result["resumed_from_step"] == 0
    assert ModelStore(tmp_path / "store").resolve("synthesizer", result["version"][:8]).path == Path(
        result["path"]
    )
    assert done.progress == 1.0 and done.error is None
    log = service.logs(job.id)
    assert "stage: train synthesizer" in log and "job succeeded" in log
    assert_no_partial_models(tmp_path / "store")
    # The model is in the store; the job's scratch copy and checkpoints go once the scheduler has seen
    # the worker exit (the record says succeeded just before); its log stays.
    wait_for(lambda: not service.executor.work_dir(job.id).exists(), 10.0, "the work folder to go")
    assert service.executor.log_path(job.id).is_file()
    with pytest.raises(ConfigError, match="another training service"):
        JobScheduler.local(tmp_path / "jobs", service.roots, tmp_path / "store").start()


@pytest.mark.timeout(120)
def test_a_job_killed_by_sigkill_is_failed_with_the_reason(service, demo_manifest, tmp_path):
    job = service.submit("train-synthesizer", synth_params(demo_manifest, 100_000, checkpoint_every=4))
    first_checkpoint(tmp_path / "jobs", job.id)
    pid = service.get(job.id).pid
    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    done = finished(service, job.id)
    assert (done.state, done.error) == ("failed", "killed by SIGKILL (out of memory?)")
    assert_no_partial_models(tmp_path / "store")


@pytest.mark.timeout(120)
def test_cancel_a_running_job(service, demo_manifest, tmp_path):
    job = service.submit("train-synthesizer", synth_params(demo_manifest, 100_000, checkpoint_every=4))
    wait_for(lambda: service.get(job.id).stage == "train synthesizer", 60, "training to start")
    pid = service.get(job.id).pid
    assert service.cancel(job.id).cancel_requested
    done = finished(service, job.id, timeout=30)
    assert (done.state, done.error) == ("cancelled", "cancelled by request")
    assert not _alive(pid)
    assert service.cancel(job.id).state == "cancelled"  # idempotent


SERVICE = """
import json, sys, time
from pathlib import Path
from models.jobs import JobRoots
from services.training.scheduler import JobScheduler

data, out, store, root, params = sys.argv[1:6]
scheduler = JobScheduler.local(data, JobRoots((Path(root),), out), store, poll_seconds=0.05)
scheduler.start()
print(scheduler.submit("train-synthesizer", json.loads(params)).id, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(180)
def test_kill_9_of_the_service_then_restart_resumes_the_job(tmp_path, roots, demo_manifest, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    jobs_dir, store_root = tmp_path / "jobs", tmp_path / "store"
    params = synth_params(demo_manifest, 120, checkpoint_every=8)
    args = [jobs_dir, roots.output_root, store_root, demo_manifest.parent, json.dumps(params)]
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, *map(str, args)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        job_id = service.stdout.readline().strip()
        first_checkpoint(jobs_dir, job_id)
        worker_pid = JobStore(jobs_dir / "jobs.db").get(job_id).pid
        service.send_signal(signal.SIGKILL)
        service.wait(10)
    finally:
        service.kill()
        service.wait()
    wait_for(lambda: not _alive(worker_pid), 10, "the job process to die with the service")
    record = JobStore(jobs_dir / "jobs.db").get(job_id)
    assert (record.state, record.attempts) == ("running", 1)  # intact, as the dead service left it
    assert ModelStore(store_root).versions("synthesizer") == []
    assert_no_partial_models(store_root)

    restarted = JobScheduler.local(jobs_dir, roots, store_root, poll_seconds=0.05)
    restarted.start()
    try:
        done = finished(restarted, job_id)
    finally:
        restarted.stop()
    assert done.state == "succeeded", restarted.logs(job_id)
    assert done.attempts == 2 and done.result["resumed_from_step"] >= 8 and done.result["steps"] == 120
    assert "resumed from step" in restarted.logs(job_id)
    assert [m.version for m in ModelStore(store_root).versions("synthesizer")] == [done.result["version"]]
    assert_no_partial_models(store_root)
