"""A recording fake of the Kubernetes API for the executor's tests (no cluster exists here, and none is
pretended): ``BatchV1Api`` / ``CoreV1Api`` methods the executor uses, on dicts of real
``kubernetes.client`` models for every status it reads; :class:`RunningCluster` also runs each created
pod's command in-process (the pod side, services/training/experiment_stages.py, for real).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from models.jobs import JobRoots
from services.training import experiment_stages as stages
from services.training.jobstore import JobStore
from services.training.k8s import KubernetesExecutor
from services.training.k8s.manifest import INDEX_KEY
from services.training.scheduler import JobScheduler

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo.yaml"
IMAGE = "registry.example.com/lesionsynth-training:0.1.0-gpu"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
EXPERIMENT = {"config": str(DEMO)}  # experiments/demo.yaml: 3 strategies x 2 seeds
PLAIN = {"model": "latest"}  # an export job's parameters


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


def submit(store: JobStore, job_type: str, params: dict):
    return store.create(job_type, params)


def terminated(reason="Error", exit_code=1, message=None):
    return client.V1ContainerStateTerminated(reason=reason, exit_code=exit_code, message=message)


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
