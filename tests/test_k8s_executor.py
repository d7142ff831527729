"""The Kubernetes executor, offline: no cluster exists here, and none is pretended.

- The Job objects it generates pass ``kubernetes-validate --strict`` (the CLI, on a YAML file, for the
  oldest supported and the newest Kubernetes) and have the structure the design promises.
- Its calls against a recording fake of ``BatchV1Api`` / ``CoreV1Api`` (real ``kubernetes.client``
  models for every status it reads) are checked, driven through the real ``JobScheduler`` and
  ``JobStore``: Job order, status mapping, failure reasons, cancel, adoption after a restart, logs.
- The pod side (services/training/experiment_stages.py) runs for real: a fake cluster that runs each
  created pod's command in-process takes a tiny experiment through prepare, an Indexed units Job and
  aggregate.

What only a real cluster can show (scheduling, GPUs, PVC access modes, the termination-log mount under a
read-only root filesystem, the Job controller's timing) is listed in the report of issue 5.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from models.errors import ConfigError
from models.jobs import JobRoots
from services.training import experiment_stages as stages
from services.training.executor import LocalProcessExecutor
from services.training.jobstore import JobStore
from services.training.k8s_executor import (
    INDEX_KEY,
    KubernetesExecutor,
    build_executor,
    build_scheduler,
    job_name,
    parse_indexes,
    scale_quantity,
)
from services.training.scheduler import JobScheduler
from services.training.settings import KubernetesSettings, TrainingSettings, pod_namespace

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo.yaml"
IMAGE = "registry.example.com/lesionsynth-training:0.1.0-gpu"
OLDEST, NEWEST = "1.33.0", "1.37.0"  # backoffLimitPerIndex is GA from 1.33 (beta, on, since 1.29)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


# -- a recording fake of the two APIs -------------------------------------------------------------


def matches(labels: dict | None, label_selector: str | None) -> bool:
    wanted = dict(part.split("=", 1) for part in (label_selector or "").split(",") if part)
    return all((labels or {}).get(k) == v for k, v in wanted.items())


class FakeCluster:
    """BatchV1Api + CoreV1Api methods the executor uses, on dicts of real client models."""

    def __init__(self):
        self.jobs: dict[str, client.V1Job] = {}
        self.pods: dict[str, client.V1Pod] = {}
        self.logs: dict[str, str] = {}
        self.calls: list[tuple] = []
        self.batch, self.core = _Batch(self), _Core(self)

    def created(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "create"]

    def deleted(self) -> list[tuple[str, str]]:
        return [(c[1], c[2]) for c in self.calls if c[0] == "delete"]

    def set_status(self, name: str, *, complete: bool | None = None, reason: str | None = None, **status):
        conditions = None
        if complete is not None:
            conditions = [
                client.V1JobCondition(
                    type="Complete" if complete else "Failed", status="True", reason=reason, message=None
                )
            ]
        self.jobs[name].status = client.V1JobStatus(conditions=conditions, **status)

    def add_pod(
        self,
        job: str,
        index: int | None = None,
        phase: str = "Running",
        log: str = "",
        terminated: client.V1ContainerStateTerminated | None = None,
        waiting: client.V1ContainerStateWaiting | None = None,
        unschedulable: str | None = None,
    ) -> str:
        labels = dict(self.jobs[job].spec.template.metadata.labels)
        annotations = {}
        if index is not None:
            labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
        name = f"{job}-{index if index is not None else 0}-x{len(self.pods)}"
        state = client.V1ContainerState(terminated=terminated, waiting=waiting)
        conditions = None
        if unschedulable:
            conditions = [
                client.V1PodCondition(
                    type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable
                )
            ]
        self.pods[name] = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name,
                labels=labels,
                annotations=annotations,
                creation_timestamp=T0 + timedelta(seconds=len(self.pods)),
            ),
            status=client.V1PodStatus(
                phase=phase,
                conditions=conditions,
                container_statuses=[
                    client.V1ContainerStatus(
                        name="job", image=IMAGE, image_id="", ready=False, restart_count=0, state=state
                    )
                ],
            ),
        )
        self.logs[name] = log
        return name

    def on_create(self, job: client.V1Job) -> None:
        """A hook for subclasses (the running cluster below)."""


class _Batch:
    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def create_namespaced_job(self, namespace, body, field_validation=None):
        name = body.metadata.name
        self.c.calls.append(("create", name, field_validation, namespace))
        if name in self.c.jobs:
            raise ApiException(status=409, reason="Conflict")
        job = body.model_copy(deep=True)
        job.status = client.V1JobStatus(active=1)
        self.c.jobs[name] = job
        self.c.on_create(job)
        return job

    def read_namespaced_job(self, name, namespace):
        self.c.calls.append(("read", name))
        if name not in self.c.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self.c.jobs[name]

    def list_namespaced_job(self, namespace, label_selector=None):
        self.c.calls.append(("list", label_selector))
        return client.V1JobList(
            items=[j for j in self.c.jobs.values() if matches(j.metadata.labels, label_selector)]
        )

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        self.c.calls.append(("delete", name, propagation_policy))
        if self.c.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")


class _Core:
    def __init__(self, cluster: FakeCluster):
        self.c = cluster

    def list_namespaced_pod(self, namespace, label_selector=None):
        return client.V1PodList(
            items=[p for p in self.c.pods.values() if matches(p.metadata.labels, label_selector)]
        )

    def read_namespaced_pod_log(self, name, namespace, container=None, **kwargs):
        self.c.calls.append(("log", name, container))
        return self.c.logs[name]


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture()
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture()
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "jobs" / "jobs.db")


def executor_for(cluster, store, tmp_path, **kwargs) -> KubernetesExecutor:
    values = dict(
        store=store,
        namespace="ml",
        image=IMAGE,
        jobs_dir=tmp_path / "jobs",
        store_root=tmp_path / "model-store",
        output_root=tmp_path / "outputs",
        datasets_root=tmp_path / "datasets",
        check_seconds=0.0,
    )
    values.update(kwargs)
    return KubernetesExecutor(cluster.batch, cluster.core, **values)


def scheduler_for(executor, tmp_path) -> JobScheduler:
    roots = JobRoots((tmp_path / "datasets",), tmp_path / "outputs")
    return JobScheduler(executor.store, executor, max_concurrent=4, roots=roots, lock_dir=tmp_path / "lock")


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def demo_units() -> int:
    raw = yaml.safe_load(DEMO.read_text())
    return len(raw["strategies"]) * len(raw["seeds"])


EXPERIMENT = {"config": str(DEMO)}  # experiments/demo.yaml: 3 strategies x 2 seeds
PLAIN = {"model": "latest"}  # an export job's parameters


@pytest.fixture()
def cluster_paths_executor(cluster, store) -> KubernetesExecutor:
    """The paths of docs/deploy_conventions.md, for the manifests (nothing is written there)."""
    return KubernetesExecutor(
        cluster.batch,
        cluster.core,
        store=store,
        namespace="lesionsynth",
        image=IMAGE,
        jobs_dir="/data/jobs",
        store_root="/data/model-store",
        output_root="/data/outputs",
        datasets_root="/data/datasets",
        gpu=True,
    )


def manifests(executor: KubernetesExecutor) -> dict[str, dict]:
    job_id = "0123456789abcdef0123456789abcdef"
    n = len(stages.unit_names(EXPERIMENT, executor.output_root, job_id))
    sanitize = client.ApiClient().sanitize_for_serialization
    gpu = sanitize(executor.build_job(job_id, "train-synthesizer"))
    executor.gpu = False
    cpu = sanitize(executor.build_job(job_id, "export"))
    executor.gpu = True
    experiment = {
        stage: sanitize(
            executor.build_job(job_id, "experiment", stage, completions=n if stage == "units" else None)
        )
        for stage in ("prepare", "units", "aggregate")
    }
    return {"plain": cpu, "gpu": gpu, **experiment}


# -- (a) the manifests pass kubernetes-validate --strict ------------------------------------------


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_generated_jobs_pass_kubernetes_validate_strict(cluster_paths_executor, tmp_path, version):
    docs = manifests(cluster_paths_executor)
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all(list(docs.values()), sort_keys=False))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    run = subprocess.run(
        [str(cli), "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" passed for resource job/") == 5, run.stdout


def test_strict_validation_catches_a_bad_field(cluster_paths_executor):
    """The check has teeth: an unknown field fails strict validation (the library, as the CLI does)."""
    import kubernetes_validate

    job = manifests(cluster_paths_executor)["plain"]
    kubernetes_validate.validate(job, NEWEST, strict=True)
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, NEWEST, strict=True)


def test_a_data_parallel_job_gets_one_gpu_per_process_on_one_node(cluster, store, tmp_path):
    """train-synthesizer with processes=4: one pod (torchrun inside, models/torchrun.py) with 4 GPUs and
    4x the CPU and memory of a one-GPU job; the Job passes strict validation."""
    import kubernetes_validate

    assert [scale_quantity(q, 4) for q in ("4", "16Gi", "500m", "2.5")] == ["16", "64Gi", "2000m", "10"]
    executor = executor_for(cluster, store, tmp_path, gpu=True, cpu="4", memory="16Gi")
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "train-synthesizer", {**PLAIN, "processes": 4})
    scheduler.tick()
    (name,) = cluster.created()
    body = client.ApiClient().sanitize_for_serialization(cluster.jobs[name])
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
    assert {e["name"]: e["value"] for e in container["env"]}["OMP_NUM_THREADS"] == "16"
    assert body["spec"]["completions"] == 1 and body["spec"]["parallelism"] == 1
    kubernetes_validate.validate(body, NEWEST, strict=True)
    assert store.get(job.id).state == "running"


# -- (b) their structure ---------------------------------------------------------------------------


def test_job_structure(cluster_paths_executor):
    docs = manifests(cluster_paths_executor)
    job_id = "0123456789abcdef0123456789abcdef"
    units = docs["units"]["spec"]
    assert units["completionMode"] == "Indexed"
    assert units["completions"] == demo_units() == 6  # one pod per (strategy, seed)
    assert units["parallelism"] == 6  # default: every unit at once
    assert units["backoffLimitPerIndex"] == 0 and "backoffLimit" not in units  # each unit tried once
    for name, doc in docs.items():
        spec, meta = doc["spec"], doc["metadata"]
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        assert len(meta["name"]) <= 63 and meta["name"].startswith("lesionsynth-job-0123456789ab")
        assert "ownerReferences" not in meta
        if name != "units":
            assert spec["backoffLimit"] == 0 and spec["completions"] == 1 and "completionMode" not in spec
        assert spec["activeDeadlineSeconds"] == 3 * 24 * 3600 and spec["ttlSecondsAfterFinished"] == 86400
        assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "lesionsynth-training-job"  # deploy/k8s/base/serviceaccounts.yaml
        assert spec["podFailurePolicy"]["rules"][0]["action"] == "Ignore"  # node drain / preemption only
        for labels in (meta["labels"], spec["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/part-of"] == "lesionsynth"
            assert labels["lesionsynth.io/job-id"] == job_id
        # The services' securityContext: non-root 10001, read-only root, /tmp an emptyDir.
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
        assert pod["securityContext"]["fsGroup"] == 10001
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes["tmp"] and mounts["/tmp"]["name"] == "tmp"
        assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == "lesionsynth-model-store"
        assert volumes["outputs"]["persistentVolumeClaim"]["claimName"] == "lesionsynth-outputs"
        assert volumes["datasets"]["persistentVolumeClaim"]["claimName"] == "lesionsynth-datasets"
        assert mounts["/data/datasets"]["readOnly"] and "/data/jobs" not in mounts  # jobs PVC is RWO
        assert not mounts["/data/outputs"].get("readOnly") and not mounts["/data/model-store"].get("readOnly")
        command = container["command"]
        assert command[:3] == ["python", "-m", "services.training.experiment_stages"]
        assert command[command.index("--state-dir") + 1] == f"/data/outputs/.lesionsynth-jobs/{job_id}"
        assert command[command.index("--store") + 1] == "/data/model-store"
        gpu = name != "plain"
        limits = container["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == gpu and limits.get("nvidia.com/gpu") in (None, "1")
        assert container["resources"]["requests"] == limits
        assert (pod.get("nodeSelector") == {"nvidia.com/gpu.present": "true"}) == gpu
        assert bool(pod.get("tolerations")) == gpu
    stages_run = {
        name: doc["spec"]["template"]["spec"]["containers"][0]["command"] for name, doc in docs.items()
    }
    assert [c[c.index("--stage") + 1] for c in stages_run.values()] == [
        "job",
        "job",
        "prepare",
        "unit",
        "aggregate",
    ]


def test_parallelism_and_names(cluster_paths_executor):
    cluster_paths_executor.parallelism = 2
    job = cluster_paths_executor.build_job("a" * 32, "experiment", "units", completions=6)
    assert job.spec.parallelism == 2 and job.spec.completions == 6
    cluster_paths_executor.parallelism = 50
    assert (
        cluster_paths_executor.build_job("a" * 32, "experiment", "units", completions=6).spec.parallelism == 6
    )
    with pytest.raises(ValueError, match="completions"):
        cluster_paths_executor.build_job("a" * 32, "experiment", "units")
    assert job_name("a" * 32, "job") == "lesionsynth-job-aaaaaaaaaaaa"
    assert job_name("a" * 32, "aggregate", attempt=3) == "lesionsynth-job-aaaaaaaaaaaa-aggregate-r3"
    assert parse_indexes("1,3-5") == [1, 3, 4, 5] and parse_indexes(None) == []


# -- (c) the executor's calls against the fake -----------------------------------------------------


def submit(store: JobStore, job_type: str, params: dict):
    return store.create(job_type, params)


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


def terminated(reason="Error", exit_code=1, message=None):
    return client.V1ContainerStateTerminated(reason=reason, exit_code=exit_code, message=message)


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
    code = "import sys, services.training.k8s_executor, services.training.settings; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# -- (d) the pod side, for real: a tiny experiment through the three Jobs ---------------------------


class RunningCluster(FakeCluster):
    """Runs each created Job's pods at once, in-process (``experiment_stages.main``), and sets the Job's
    status from their exit codes and termination messages, as the Job controller would."""

    def __init__(self, tmp_path, monkeypatch):
        super().__init__()
        self.tmp_path, self.monkeypatch = tmp_path, monkeypatch

    def on_create(self, job: client.V1Job) -> None:
        command = job.spec.template.spec.containers[0].command
        assert command[:3] == ["python", "-m", "services.training.experiment_stages"]
        indexed = job.spec.completion_mode == "Indexed"
        ok, failed = 0, []
        for index in range(job.spec.completions) if indexed else [None]:
            termination = self.tmp_path / f"termination-{len(self.pods)}"
            self.monkeypatch.setattr(stages, "TERMINATION_LOG", termination)
            if index is not None:
                self.monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
            code = stages.main(command[3:])
            message = termination.read_text() if termination.exists() else None
            self.add_pod(
                job.metadata.name,
                index,
                "Succeeded" if code == 0 else "Failed",
                log=f"exit {code}\n",
                terminated=terminated("Completed" if code == 0 else "Error", code, message),
            )
            ok, failed = (ok + 1, failed) if code == 0 else (ok, [*failed, str(index)])
        job.status = client.V1JobStatus(
            succeeded=ok,
            failed=len(failed),
            failed_indexes=",".join(failed) if indexed and failed else None,
            conditions=[
                client.V1JobCondition(
                    type="Failed" if failed else "Complete",
                    status="True",
                    reason=("FailedIndexes" if indexed else "BackoffLimitExceeded") if failed else None,
                )
            ],
        )


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
            assert "Traceback" in capsys.readouterr().err


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
    from services.training.k8s_executor import kubernetes_clients

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    with pytest.raises(ConfigError, match="needs the Kubernetes API: no in-cluster service account"):
        kubernetes_clients()


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
