"""The pod side of the Kubernetes executor (services/training/experiment_stages.py), for real: a fake
cluster that runs each created pod's command in-process (tests/k8s_fake.py ``RunningCluster``) takes a
tiny experiment through prepare, an Indexed units Job, the checkpoint series' own Job and aggregate;
stage failures are one-line termination messages.
"""

from __future__ import annotations

import json

import pytest

from services.training import experiment_stages as stages
from services.training.jobstore import JobStore
from tests.k8s_fake import FakeCluster, RunningCluster, executor_for, scheduler_for, submit


@pytest.fixture()
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "jobs" / "jobs.db")


def tiny_experiment(demo_manifest, **overrides) -> dict:
    config = {
        "name": "tiny",
        "manifest": str(demo_manifest),
        "positive_label": "lesion",
        "normal_label": "normal",
        "strategies": ["none"],
        "seeds": [0, 1],
        "classifier": {"arch": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 16},
    }
    config.update(overrides)
    return {"config": config}


@pytest.mark.timeout(120)
def test_a_tiny_experiment_through_prepare_indexed_units_and_aggregate(
    tmp_path, store, demo_manifest, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cluster = RunningCluster(tmp_path, monkeypatch)
    executor = executor_for(cluster, store, tmp_path, datasets_root=demo_manifest.parent)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "experiment", tiny_experiment(demo_manifest))
    for _ in range(5):
        scheduler.tick()
    base = f"lesionsynth-job-{job.id[:12]}"
    assert cluster.created() == [f"{base}-prepare", f"{base}-units", f"{base}-aggregate"]
    record = store.get(job.id)
    assert record.state == "succeeded", (record.error, executor.read_log(job.id))
    out = tmp_path / "outputs" / job.id
    assert record.result["out"] == str(out) and set(record.result["strategies"]) == {"none"}
    assert sorted(p.parent.name for p in out.glob("units/none/seed-*/test_scores.json")) == [
        "seed-0",
        "seed-1",
    ]
    assert (out / "report.md").is_file()
    folder = tmp_path / "outputs" / ".lesionsynth-jobs" / job.id
    assert json.loads((folder / "prepared.json").read_text())["manifest"] == str(demo_manifest)


@pytest.mark.timeout(600)
def test_the_checkpoint_series_runs_in_its_own_pod_and_the_aggregate_only_reads_it(
    tmp_path, store, demo_manifest, monkeypatch
):
    """A config with a series: prepare, units, series (trains the snapshots, runs their units, writes
    series.json), then aggregate, whose results hold the series the series pod wrote."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cluster = RunningCluster(tmp_path, monkeypatch)
    executor = executor_for(cluster, store, tmp_path, datasets_root=demo_manifest.parent)
    scheduler = scheduler_for(executor, tmp_path)
    params = tiny_experiment(
        demo_manifest,
        strategies=["none", "synthetic"],
        seeds=[0],
        synthesizer={"resolution": 32, "preset": "tiny", "max_steps": 8, "batch_size": 4},
        balance={"count": "parity", "steps": 3},
        series={"snapshots": [4, 8], "seeds": [0]},
    )
    job = submit(store, "experiment", params)
    for _ in range(6):
        scheduler.tick()
    base = f"lesionsynth-job-{job.id[:12]}"
    assert cluster.created() == [f"{base}-{s}" for s in ("prepare", "units", "series", "aggregate")]
    record = store.get(job.id)
    assert record.state == "succeeded", (record.error, executor.read_log(job.id))
    out = tmp_path / "outputs" / job.id
    series = json.loads((out / "series.json").read_text())
    assert list(series["steps"]) == ["4", "8"]
    assert json.loads((out / "results.json").read_text())["series"] == series
    assert (out / "series" / "synthesizer" / "snapshots" / "step-000008" / "model_card.json").is_file()


def test_stage_failures_are_one_line_termination_messages(tmp_path, store, demo_manifest, monkeypatch):
    """Aggregating before the units ran, and a unit index out of range, fail with the reason (fast)."""
    cluster = RunningCluster(tmp_path, monkeypatch)
    executor = executor_for(cluster, store, tmp_path)
    job = submit(store, "experiment", tiny_experiment(demo_manifest))
    folder = executor.state_dir(job.id)
    stages.write_spec(folder, job.id, job.type, job.params)
    termination = tmp_path / "termination"
    monkeypatch.setattr(stages, "TERMINATION_LOG", termination)
    argv = [*executor.command(job.id, "aggregate")[3:]]
    assert stages.main(argv) == stages.EXIT_FAILED
    assert (
        termination.read_text()
        == "the experiment was not prepared: " + str(folder / "prepared.json") + " is missing"
    )
    assert stages.main([*executor.command(job.id, "prepare")[3:]]) == 0
    assert stages.main([*executor.command(job.id, "aggregate")[3:]]) == stages.EXIT_FAILED
    assert termination.read_text().startswith(
        "cannot aggregate: 2 unit(s) not finished: none/seed-0, none/seed-1"
    )
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert stages.main([*executor.command(job.id, "units")[3:]]) == stages.EXIT_FAILED
    assert termination.read_text() == "unit index 2 is not in [0, 1] for this experiment"
    wrong = executor.command(job.id, "job")[3:]
    wrong[wrong.index("--job") + 1] = "f" * 32
    assert stages.main(wrong) == stages.EXIT_FAILED and "no valid job spec" in termination.read_text()


def test_the_job_stage_records_progress_result_and_one_line_failures(tmp_path, store, monkeypatch, capsys):
    import dataclasses

    from models import progress
    from models.errors import ParameterError
    from models.jobs import JOB_TYPES

    def run(params, ctx):
        if params["model"] == "bad":
            raise ParameterError("model: no classifier 'bad' in the store\n(see /list_models)")
        if params["model"] == "bug":
            return {}["missing"]
        for _ in progress.tqdm(range(4), desc="export onnx", disable=True):
            pass
        assert ctx.work_dir == executor.state_dir(ctx.job_id) / "work" and ctx.work_dir.is_dir()
        return {"version": "v1", "output_dir": str(ctx.output_dir)}

    monkeypatch.setitem(JOB_TYPES, "export", dataclasses.replace(JOB_TYPES["export"], run=run))
    termination = tmp_path / "termination"
    monkeypatch.setattr(stages, "TERMINATION_LOG", termination)
    executor = executor_for(FakeCluster(), store, tmp_path)
    for model, code in (("good", 0), ("bad", 1), ("bug", 1)):
        job = submit(store, "export", {"model": model})
        folder = executor.state_dir(job.id)
        stages.write_spec(folder, job.id, job.type, job.params)
        assert stages.main(executor.command(job.id, "job")[3:]) == code
        if model == "good":
            assert stages.read_result(folder) == {
                "version": "v1",
                "output_dir": str(tmp_path / "outputs" / job.id),
            }
            assert stages.read_progress(folder) == ("export onnx", 1.0)
        elif model == "bad":
            assert termination.read_text() == "model: no classifier 'bad' in the store (see /list_models)"
            assert stages.read_result(folder) is None
        else:
            assert termination.read_text() == "internal error: KeyError (see the job log)"


def test_a_pods_progress_file_reads_back_as_stage_and_fraction(tmp_path):
    """The pod writes its bar in models.progress.JsonFileSink's format (as torchrun ranks do); the executor
    reads the stage, with the pod's prefix, and the fraction, clamped to [0, 1]."""
    assert stages.read_progress(tmp_path) is None
    sink = stages.FileProgress(tmp_path, prefix="prepare: ")
    sink("decode train", 3, 12)
    assert stages.read_progress(tmp_path) == ("prepare: decode train", 0.25)
    sink("decode val", 5, None)  # a bar without a total
    assert stages.read_progress(tmp_path) == ("prepare: decode val", 0.0)
    sink("decode val", 13, 12)
    assert stages.read_progress(tmp_path) == ("prepare: decode val", 1.0)
    (tmp_path / stages.PROGRESS).write_text("{not json")
    assert stages.read_progress(tmp_path) is None
