"""The Kubernetes executor's state machine (services/training/k8s/executor.py), offline.

Its calls against a recording fake of ``BatchV1Api`` / ``CoreV1Api`` (tests/k8s_fake.py: real
``kubernetes.client`` models for every status it reads) are checked, driven through the real
``JobScheduler`` and ``JobStore``: Job order, status mapping, failure reasons, cancel, adoption after a
restart, logs; and the scheduler wiring (services/training/scheduler.py). The Job objects are
tests/test_k8s_manifest.py's, the pod side tests/test_k8s_stages.py's.

What only a real cluster can show (scheduling, GPUs, PVC access modes, the termination-log mount under a
read-only root filesystem, the Job controller's timing) is listed in the report of issue 5.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from models.errors import ConfigError
from models.jobs import JobRoots
from services.training import experiment_stages as stages
from services.training.executor import LocalProcessExecutor
from services.training.jobstore import JobStore
from services.training.scheduler import JobScheduler, build_executor, build_scheduler
from services.training.settings import KubernetesSettings, TrainingSettings, pod_namespace
from tests.k8s_fake import (
    DEMO,
    EXPERIMENT,
    IMAGE,
    PLAIN,
    REPO,
    FakeCluster,
    demo_units,
    executor_for,
    scheduler_for,
    submit,
    terminated,
    wait_for,
)


@pytest.fixture()
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture()
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "jobs" / "jobs.db")


def test_a_plain_job_runs_as_one_job_and_its_result_is_recorded(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "export", PLAIN)
    scheduler.tick()
    name = f"lesionsynth-job-{job.id[:12]}"
    assert cluster.created() == [name]
    assert [c for c in cluster.calls if c[0] == "create"] == [("create", name, "Strict", "ml")]
    folder = tmp_path / "outputs" / ".lesionsynth-jobs" / job.id
    assert json.loads((folder / "spec.json").read_text()) == {"id": job.id, "type": "export", "params": PLAIN}
    assert store.get(job.id).state == "running" and store.get(job.id).pid is None

    # Running: the pod's progress file reaches the record; a pod waiting for a GPU says so.
    (folder / "progress.json").write_text(json.dumps({"desc": "export onnx", "n": 1, "total": 4}))
    cluster.add_pod(name, unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    scheduler.tick()
    record = store.get(job.id)
    assert record.state == "running" and record.progress == 0.25
    assert record.stage.startswith("export onnx (waiting for a node: Unschedulable: 0/3 nodes")

    # Succeeded: the result the pod wrote becomes the job's result; the pod's log is archived.
    cluster.pods.clear()
    cluster.add_pod(name, phase="Succeeded", log="INFO exported\n")
    (folder / "result.json").write_text(json.dumps({"result": {"version": "abc"}}))
    cluster.set_status(name, complete=True, succeeded=1)
    scheduler.tick()
    record = store.get(job.id)
    assert record.state == "succeeded" and record.result == {"version": "abc"} and record.progress == 1.0
    assert scheduler.running_jobs == []
    log = executor.read_log(job.id)
    assert f"created Job {name}" in log and "INFO exported" in log
    assert log.count("INFO exported") == 1  # archived once, not again from the still-listed pod


def test_an_experiment_runs_prepare_then_one_indexed_job_then_aggregate(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path, parallelism=4)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "experiment", EXPERIMENT)
    base = f"lesionsynth-job-{job.id[:12]}"
    scheduler.tick()
    assert cluster.created() == [f"{base}-prepare"]  # the units wait for prepare
    scheduler.tick()
    assert cluster.created() == [f"{base}-prepare"] and store.get(job.id).stage == "prepare: starting"

    cluster.set_status(f"{base}-prepare", complete=True, succeeded=1)
    scheduler.tick()
    assert cluster.created() == [f"{base}-prepare", f"{base}-units"]
    units = cluster.jobs[f"{base}-units"]
    assert units.spec.completion_mode == "Indexed" and units.spec.completions == demo_units()
    assert units.spec.parallelism == 4

    cluster.set_status(f"{base}-units", succeeded=3, active=3, ready=3)
    scheduler.tick()
    record = store.get(job.id)
    assert record.progress == 0.5 and record.stage == "experiment units: 3/6 done, 3 running"
    assert cluster.created()[-1] == f"{base}-units"  # no aggregate before every unit is done

    cluster.set_status(f"{base}-units", complete=True, succeeded=6)
    scheduler.tick()
    assert cluster.created() == [f"{base}-prepare", f"{base}-units", f"{base}-aggregate"]
    result = {"out": "x", "strategies": {"none": {"auc_mean": 0.7, "auc_sd": 0.01}}}
    folder = tmp_path / "outputs" / ".lesionsynth-jobs" / job.id
    (folder / "result.json").write_text(json.dumps({"result": result}))
    cluster.set_status(f"{base}-aggregate", complete=True, succeeded=1)
    scheduler.tick()
    assert store.get(job.id).state == "succeeded" and store.get(job.id).result == result
    assert cluster.deleted() == []  # finished Jobs are left to their TTL


@pytest.mark.parametrize(
    "case, expected",
    [
        ("deadline", "ran longer than its deadline (259200 s, LESIONSYNTH_K8S_DEADLINE_S)"),
        ("oom", "out of memory: the container was OOMKilled (memory limit 16Gi, LESIONSYNTH_K8S_MEMORY)"),
        ("message", "label 'melanoma' does not occur in the manifest"),
        ("crash", "Segmentation fault (core dumped)"),
        ("evicted", "Evicted: The node was low on resource: ephemeral-storage."),
    ],
)
def test_failures_are_recorded_with_the_reason(cluster, store, tmp_path, case, expected):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "train-synthesizer", {"manifest": "m.csv"})
    scheduler.tick()
    name = f"lesionsynth-job-{job.id[:12]}"
    if case == "deadline":
        cluster.add_pod(name, phase="Failed", terminated=terminated(exit_code=143))
        cluster.set_status(name, complete=False, reason="DeadlineExceeded", failed=1)
    else:
        if case == "oom":
            cluster.add_pod(name, phase="Failed", terminated=terminated("OOMKilled", 137))
        elif case == "message":  # what experiment_stages writes to /dev/termination-log
            cluster.add_pod(name, phase="Failed", terminated=terminated(message=expected))
        elif case == "crash":  # nothing written: FallbackToLogsOnError gives the log's tail
            tail = "Traceback (most recent call last):\n  ...\nSegmentation fault (core dumped)\n"
            cluster.add_pod(name, phase="Failed", terminated=terminated(exit_code=139, message=tail))
        else:
            cluster.add_pod(name, phase="Failed")
            cluster.pods[next(iter(cluster.pods))].status.reason = "Evicted"
            cluster.pods[
                next(iter(cluster.pods))
            ].status.message = "The node was low on resource: ephemeral-storage."
        cluster.set_status(name, complete=False, reason="BackoffLimitExceeded", failed=1)
    code = executor.poll(scheduler._running[job.id])
    record = store.get(job.id)
    assert record.state == "failed" and expected in record.error
    assert code == {"oom": -9, "crash": -11, "deadline": -15}.get(case, 1)
    assert "failed: " in executor.read_log(job.id)


def test_failed_units_are_named(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "experiment", EXPERIMENT)
    base = f"lesionsynth-job-{job.id[:12]}"
    scheduler.tick()
    cluster.set_status(f"{base}-prepare", complete=True, succeeded=1)
    scheduler.tick()
    units = f"{base}-units"
    for index in range(6):
        if index == 1:
            cluster.add_pod(units, index, "Failed", terminated=terminated("OOMKilled", 137))
        elif index == 4:
            cluster.add_pod(units, index, "Failed", terminated=terminated(message="unit x: no val rows"))
        else:
            cluster.add_pod(units, index, "Succeeded", terminated=terminated("Completed", 0))
    cluster.set_status(
        units, complete=False, reason="FailedIndexes", failed=2, succeeded=4, failed_indexes="1,4"
    )
    scheduler.tick()
    record = store.get(job.id)
    assert record.state == "failed"
    names = stages.unit_names(EXPERIMENT, tmp_path / "outputs", job.id)
    assert names[1] == "none/seed-1" and names[4] == "synthetic/seed-0"  # strategy-major order
    assert record.error.startswith("2 of 6 experiment units failed: none/seed-1: out of memory")
    assert "synthetic/seed-0: unit x: no val rows" in record.error
    assert not any(n.endswith("-aggregate") for n in cluster.created())


def test_cancel_deletes_every_job_of_the_job_with_background_propagation(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "experiment", EXPERIMENT)
    other = submit(store, "export", PLAIN)
    base = f"lesionsynth-job-{job.id[:12]}"
    scheduler.tick()
    cluster.set_status(f"{base}-prepare", complete=True, succeeded=1)
    scheduler.tick()
    scheduler.cancel(job.id)
    scheduler.tick()  # cancel: delete both Jobs; the next pass sees them gone
    assert sorted(cluster.deleted()) == [(f"{base}-prepare", "Background"), (f"{base}-units", "Background")]
    scheduler.tick()
    record = store.get(job.id)
    assert record.state == "cancelled" and record.error == "cancelled by request"
    assert f"lesionsynth-job-{other.id[:12]}" in cluster.jobs  # another job's Job is untouched
    assert store.get(other.id).state == "running"


def test_stopping_the_service_leaves_jobs_running_and_a_restart_adopts_them(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    running = submit(store, "experiment", EXPERIMENT)
    finished = submit(store, "export", PLAIN)
    gone = submit(store, "export", {"model": "other"})
    scheduler.start()
    try:
        wait_for(lambda: len(cluster.created()) == 3, "the three Jobs")
    finally:
        scheduler.stop()  # cancel() without a cancel request: nothing is deleted
    assert cluster.deleted() == [] and store.get(running.id).state == "running"
    base = f"lesionsynth-job-{running.id[:12]}"
    cluster.set_status(f"{base}-prepare", complete=True, succeeded=1)  # progressed while the service was down
    (tmp_path / "outputs" / ".lesionsynth-jobs" / finished.id / "result.json").write_text(
        json.dumps({"result": {"version": "v9"}})
    )
    cluster.set_status(f"lesionsynth-job-{finished.id[:12]}", complete=True, succeeded=1)
    del cluster.jobs[f"lesionsynth-job-{gone.id[:12]}"]  # e.g. deleted by hand while the service was down

    cluster.calls.clear()
    restarted = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(restarted, tmp_path)
    scheduler.recover()  # what start() does first: reap_orphan each running job, then requeue the rest
    assert store.get(finished.id).state == "succeeded" and store.get(finished.id).result == {"version": "v9"}
    assert cluster.created() == [f"{base}-units"]  # the adopted experiment went on to its next stage
    # Adopted: still running, same attempt (the work was not restarted); the one whose Job was gone is
    # requeued as attempt 2.
    adopted = store.get(running.id)
    assert (adopted.state, adopted.attempts) == ("running", 1)
    assert (store.get(gone.id).state, store.get(gone.id).attempts) == ("queued", 2)
    scheduler.tick()
    assert cluster.created() == [f"{base}-units", f"lesionsynth-job-{gone.id[:12]}-r2"]
    assert store.get(running.id).state == "running" and cluster.deleted() == []
    assert "adopted" in restarted.read_log(running.id)
    cluster.set_status(f"{base}-units", complete=True, succeeded=6)
    scheduler.tick()  # the adopted handle is polled like any other: on to aggregate
    assert cluster.created()[-1] == f"{base}-aggregate"


def test_an_adopted_job_survives_any_number_of_restarts_without_counting_attempts(cluster, store, tmp_path):
    """Restarts of the service do not restart the work on the cluster, so they are not attempts; only a
    job whose Jobs are gone is requeued, and that counts towards max_attempts."""
    roots = JobRoots((tmp_path,), tmp_path / "outputs")

    def restarted_service() -> JobScheduler:
        """A new service process: a fresh executor and scheduler, which recovers first (as start() does)."""
        executor = executor_for(cluster, store, tmp_path)
        scheduler = JobScheduler(store, executor, roots=roots, lock_dir=tmp_path, max_attempts=2)
        scheduler.recover()
        return scheduler

    job = submit(store, "export", PLAIN)
    JobScheduler(store, executor_for(cluster, store, tmp_path), roots=roots, lock_dir=tmp_path).tick()
    for _ in range(4):  # four service restarts, more than max_attempts
        restarted_service().tick()
    record = store.get(job.id)
    assert (record.state, record.attempts) == ("running", 1)
    assert cluster.created() == [f"lesionsynth-job-{job.id[:12]}"] and cluster.deleted() == []

    del cluster.jobs[next(iter(cluster.jobs))]  # its Job vanishes: requeued as attempt 2
    restarted_service().tick()
    assert (store.get(job.id).state, store.get(job.id).attempts) == ("running", 2)
    del cluster.jobs[next(iter(cluster.jobs))]  # and again: max_attempts reached
    restarted_service()
    record = store.get(job.id)
    assert record.state == "interrupted" and "2 times" in record.error


def test_read_log_concatenates_the_pods_logs(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "experiment", EXPERIMENT)
    base = f"lesionsynth-job-{job.id[:12]}"
    scheduler.tick()
    cluster.add_pod(f"{base}-prepare", phase="Succeeded", log="prepared\n")
    cluster.set_status(f"{base}-prepare", complete=True, succeeded=1)
    scheduler.tick()
    cluster.add_pod(f"{base}-units", 1, log="unit one\n")
    cluster.add_pod(f"{base}-units", 0, log="unit zero\n")
    log = executor.read_log(job.id)
    assert log.index("prepared") < log.index("unit one") < log.index("unit zero")  # by creation time
    assert f"=== pod {base}-units-1" in log and "(index 0)" in log
    assert executor.read_log(job.id, tail_bytes=10) == "unit zero\n"
    assert [c for c in cluster.calls if c[0] == "log"][-1][2] == "job"  # the container's name


def test_an_unreachable_api_does_not_fail_the_job(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "export", PLAIN)
    scheduler.tick()

    def refuse(name, namespace):
        raise ApiException(status=503, reason="Service Unavailable")

    cluster.batch.read_namespaced_job = refuse
    scheduler.tick()
    record = store.get(job.id)
    assert record.state == "running" and "503 Service Unavailable" in record.stage


def test_a_refused_job_fails_to_start_with_the_servers_message(cluster, store, tmp_path):
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)

    def refuse(namespace, body, field_validation=None):
        body = json.dumps({"message": 'strict decoding error: unknown field "spec.backoffLimitPerIndex"'})
        raise ApiException(status=400, reason="Bad Request", body=body)

    cluster.batch.create_namespaced_job = refuse
    job = submit(store, "export", PLAIN)
    scheduler.tick()
    record = store.get(job.id)
    assert record.state == "failed"
    assert "400 Bad Request: strict decoding error: unknown field" in record.error


def test_a_new_attempt_first_deletes_an_earlier_attempt_still_running(cluster, store, tmp_path):
    scheduler = scheduler_for(executor_for(cluster, store, tmp_path), tmp_path)
    job = submit(store, "export", PLAIN)
    scheduler.tick()
    base = f"lesionsynth-job-{job.id[:12]}"

    def unreachable(namespace, label_selector=None):
        raise ApiException(status=503, reason="Service Unavailable")

    cluster.batch.list_namespaced_job = unreachable
    scheduler = scheduler_for(executor_for(cluster, store, tmp_path), tmp_path)
    scheduler.recover()  # the restart cannot see the Job: the job is requeued
    del cluster.batch.list_namespaced_job
    assert store.get(job.id).state == "queued"
    scheduler.tick()
    assert cluster.deleted() == [(base, "Background")]  # the old attempt's pod must not write on
    assert cluster.created() == [base, f"{base}-r2"] and store.get(job.id).attempts == 2


def test_without_a_cluster_the_kubernetes_executor_says_so(monkeypatch, tmp_path):
    from services.training.k8s import kubernetes_clients

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    with pytest.raises(ConfigError, match="needs the Kubernetes API: no in-cluster service account"):
        kubernetes_clients()


def test_an_experiment_with_a_series_runs_it_as_its_own_job_before_aggregate(cluster, store, tmp_path):
    """A config with a checkpoint series: prepare, units, series (it trains), then aggregate (it reads)."""
    config = yaml.safe_load(DEMO.read_text())
    config["manifest"] = str((DEMO.parent / config["manifest"]).resolve())
    config["series"] = {"snapshots": [4, 8], "seeds": [0]}
    executor = executor_for(cluster, store, tmp_path)
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "experiment", {"config": config})
    base = f"lesionsynth-job-{job.id[:12]}"
    scheduler.tick()
    for stage in ("prepare", "units"):
        cluster.set_status(f"{base}-{stage}", complete=True, succeeded=1)
        scheduler.tick()
    assert cluster.created() == [f"{base}-prepare", f"{base}-units", f"{base}-series"]
    series = cluster.jobs[f"{base}-series"].spec
    assert series.completions == 1 and series.template.spec.containers[0].command[4] == "series"
    scheduler.tick()
    assert store.get(job.id).stage == "series: starting"

    # A restart while the series runs adopts it, and aggregate follows it.
    restarted = scheduler_for(executor_for(cluster, store, tmp_path), tmp_path)
    restarted.recover()
    cluster.set_status(f"{base}-series", complete=True, succeeded=1)
    restarted.tick()
    assert cluster.created()[-1] == f"{base}-aggregate" and len(cluster.created()) == 4


# -- settings and wiring ---------------------------------------------------------------------------


def test_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("LESIONSYNTH_EXECUTOR", "kubernetes")
    with pytest.raises(ConfigError, match="LESIONSYNTH_K8S_IMAGE"):
        TrainingSettings.from_env()
    monkeypatch.setenv("LESIONSYNTH_K8S_IMAGE", IMAGE)
    monkeypatch.setenv("LESIONSYNTH_K8S_GPU", "1")
    monkeypatch.setenv("LESIONSYNTH_K8S_NAMESPACE", "ml")
    settings = TrainingSettings.from_env()
    k8s = settings.kubernetes
    assert settings.executor == "kubernetes" and k8s.image == IMAGE and k8s.gpu and k8s.namespace == "ml"
    assert k8s.parallelism is None and k8s.outputs_claim == "lesionsynth-outputs"
    monkeypatch.setenv("LESIONSYNTH_K8S_PARALLELISM", "3")
    assert KubernetesSettings.from_env().parallelism == 3
    monkeypatch.setenv("LESIONSYNTH_EXECUTOR", "slurm")
    with pytest.raises(ConfigError, match="local, kubernetes"):
        TrainingSettings.from_env()
    namespace = tmp_path / "namespace"
    namespace.write_text("screening\n")
    assert pod_namespace(namespace) == "screening" and pod_namespace(tmp_path / "none") == "lesionsynth"


def test_build_scheduler_local_needs_no_kubernetes(monkeypatch, tmp_path):
    monkeypatch.setenv("LESIONSYNTH_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.delenv("LESIONSYNTH_EXECUTOR", raising=False)
    settings = TrainingSettings.from_env()
    scheduler = build_scheduler(settings, JobRoots((tmp_path,), tmp_path / "out"))
    assert (
        isinstance(scheduler.executor, LocalProcessExecutor)
        and scheduler.store.db_path.parent == tmp_path / "jobs"
    )
    assert isinstance(build_executor(settings, scheduler.store), LocalProcessExecutor)
    code = (
        "import sys, services.training.scheduler, services.training.k8s, services.training.settings; "
        "print('kubernetes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
