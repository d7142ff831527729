"""The ``batch/v1`` Job of one stage of a job, as the dict the API server receives: a pure function.

:func:`job_manifest` maps a :class:`JobTemplate` (what every Job of this service shares: image,
namespace, volumes, resources) and one stage of a job to the Job; nothing here talks to the cluster or
imports the Kubernetes client. tests/golden/k8s/ holds a few of its outputs, compared exactly
(docs/kubernetes-executor.md says why each field is there and how to regenerate them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.training import experiment_stages as stages

if TYPE_CHECKING:
    from services.training.settings import TrainingSettings

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_SERVICE_ACCOUNT = "lesionsynth-training-job"
JOB_ID_LABEL = "lesionsynth.io/job-id"
JOB_TYPE_LABEL = "lesionsynth.io/job-type"
STAGE_LABEL = "lesionsynth.io/stage"
ATTEMPT_LABEL = "lesionsynth.io/attempt"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"  # label (>= 1.28) and annotation of Indexed pods
NAME_PREFIX = "lesionsynth-job-"
CONTAINER = "job"
UID = 10001

#: Kubernetes Jobs of a job, in order. The pod-side stage of "units" is "unit" (one per pod).
PLAIN_STAGES = ("job",)
EXPERIMENT_STAGES = ("prepare", "units", "aggregate")
#: An experiment whose config asks for a checkpoint series: the series after its units, before aggregate.
SERIES_STAGES = ("prepare", "units", "series", "aggregate")
POD_STAGE = {
    "job": "job",
    "prepare": "prepare",
    "units": "unit",
    "series": "series",
    "aggregate": "aggregate",
}

GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}


@dataclass(frozen=True)
class JobTemplate:
    """What every Job of the service shares (LESIONSYNTH_K8S_* and the service's own paths)."""

    namespace: str
    image: str
    #: The service's paths; the pods mount the claims below at the same paths.
    store_root: Path
    output_root: Path
    #: The read-only datasets volume (the service's first data root outside the output root), if any.
    datasets_root: Path | None = None
    model_store_claim: str = "lesionsynth-model-store"
    datasets_claim: str = "lesionsynth-datasets"
    outputs_claim: str = "lesionsynth-outputs"
    gpu: bool = False
    #: Pods of the units Job at once; None = all of them.
    parallelism: int | None = None
    cpu: str = "4"
    memory: str = "16Gi"
    deadline_seconds: int = 3 * 24 * 3600
    ttl_seconds: int = 24 * 3600
    image_pull_policy: str = "IfNotPresent"

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_root", Path(self.store_root))
        object.__setattr__(self, "output_root", Path(self.output_root))
        if self.datasets_root is not None:
            object.__setattr__(self, "datasets_root", Path(self.datasets_root))

    @classmethod
    def from_settings(cls, settings: TrainingSettings) -> JobTemplate:
        k8s = settings.kubernetes
        if k8s is None:
            raise ValueError("settings.kubernetes is None: LESIONSYNTH_EXECUTOR is not 'kubernetes'")
        datasets = next(
            (
                r
                for r in settings.data_roots
                if r != settings.output_root and settings.output_root not in r.parents
            ),
            None,
        )
        return cls(
            namespace=k8s.namespace,
            image=k8s.image,
            store_root=settings.model_store,
            output_root=settings.output_root,
            datasets_root=datasets,
            model_store_claim=k8s.model_store_claim,
            datasets_claim=k8s.datasets_claim,
            outputs_claim=k8s.outputs_claim,
            gpu=k8s.gpu,
            parallelism=k8s.parallelism,
            cpu=k8s.cpu,
            memory=k8s.memory,
            deadline_seconds=k8s.deadline_seconds,
            ttl_seconds=k8s.ttl_seconds,
            image_pull_policy=k8s.image_pull_policy,
        )


def job_name(job_id: str, stage: str, attempt: int = 1) -> str:
    """``lesionsynth-job-<id[:12]>[-<stage>][-r<attempt>]``: <= 63 characters (a label value)."""
    name = f"{NAME_PREFIX}{job_id[:12]}"
    if stage != "job":
        name += f"-{stage}"
    return name if attempt <= 1 else f"{name}-r{attempt}"


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def cpu_threads(cpu: str) -> int:
    """Torch/OpenMP threads for a CPU quantity ("4", "3500m", "2.5"): the whole cores, at least 1."""
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.floor(cores))


def scale_quantity(quantity: str, factor: int) -> str:
    """A resource quantity times ``factor`` ("4" x 2 = "8", "16Gi" x 2 = "32Gi", "500m" x 3 = "1500m")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity)
    if match is None or factor == 1:
        return quantity
    value = float(match.group(1)) * factor
    return f"{int(value) if value.is_integer() else value}{match.group(2)}"


def data_parallel_processes(job_type: str, params: dict) -> int:
    """How many GPUs (processes) a job's pod needs: ``processes`` of a train-synthesizer job, else 1."""
    return int(params.get("processes", 1)) if job_type == "train-synthesizer" else 1


def labels(job_id: str, job_type: str, stage: str, attempt: int) -> dict[str, str]:
    return {
        PART_OF: "lesionsynth",
        COMPONENT: "training-job",
        MANAGED_BY: "lesionsynth-training",
        JOB_ID_LABEL: job_id,
        JOB_TYPE_LABEL: job_type,
        STAGE_LABEL: stage,
        ATTEMPT_LABEL: str(attempt),
    }


def command(template: JobTemplate, job_id: str, stage: str) -> list[str]:
    """The pod's command: services/training/experiment_stages.py, the stage's pod side."""
    return [
        "python",
        "-m",
        "services.training.experiment_stages",
        *("--stage", POD_STAGE[stage], "--job", job_id),
        *("--state-dir", str(stages.state_dir(template.output_root, job_id))),
        *("--store", str(template.store_root), "--output-root", str(template.output_root)),
    ]


def _claim(name: str, claim: str, read_only: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"claimName": claim}
    if read_only:
        source["readOnly"] = True
    return {"name": name, "persistentVolumeClaim": source}


def _security_context(pod: bool) -> dict[str, Any]:
    """The services' securityContext: non-root 10001; the container's root filesystem read-only."""
    if pod:
        return {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def job_manifest(
    template: JobTemplate,
    job_id: str,
    job_type: str,
    stage: str = "job",
    *,
    attempt: int = 1,
    completions: int | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """The Job of one stage (``completions``: the number of units, for stage "units"; ``processes``: a
    data-parallel job's torchrun processes, one GPU each, on one node)."""
    job_labels = labels(job_id, job_type, stage, attempt)
    cpu, memory = scale_quantity(template.cpu, processes), scale_quantity(template.memory, processes)
    threads = str(cpu_threads(cpu))
    env = {
        "LESIONSYNTH_JOB_ID": job_id,
        "LESIONSYNTH_MODEL_STORE": str(template.store_root),
        "LESIONSYNTH_OUTPUT_ROOT": str(template.output_root),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
        "MPLCONFIGDIR": "/tmp/mpl",
        "HF_HUB_OFFLINE": "1",
        # The node's core count is not the pod's CPU limit: size torch's thread pools to the limit.
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model-store", "mountPath": str(template.store_root)},
        {"name": "outputs", "mountPath": str(template.output_root)},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
        # PyTorch data loader workers share tensors through /dev/shm (64 MiB by default in containers).
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        _claim("model-store", template.model_store_claim),
        _claim("outputs", template.outputs_claim),
    ]
    if template.datasets_root is not None:
        env["LESIONSYNTH_DATA_ROOTS"] = f"{template.datasets_root}:{template.output_root}"
        mounts.append({"name": "datasets", "mountPath": str(template.datasets_root), "readOnly": True})
        volumes.append(_claim("datasets", template.datasets_claim, read_only=True))
    resources = {"cpu": cpu, "memory": memory}
    if template.gpu:
        resources[GPU_RESOURCE] = str(processes)
    container = {
        "name": CONTAINER,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "command": command(template, job_id, stage),
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": _security_context(pod=False),
        "volumeMounts": mounts,
        # The stage writes its one-line failure there; a crash that wrote nothing leaves its log's tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        # Its own ServiceAccount (deploy/k8s/base/serviceaccounts.yaml), with no token and no Role: the
        # job pods never call the Kubernetes API.
        "serviceAccountName": JOB_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": _security_context(pod=True),
    }
    if template.gpu:
        pod["nodeSelector"] = dict(GPU_NODE_SELECTOR)
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    spec: dict[str, Any] = {
        "activeDeadlineSeconds": template.deadline_seconds,
        "ttlSecondsAfterFinished": template.ttl_seconds,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
            ]
        },
        "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod},
    }
    if stage == "units":
        if not completions or completions < 1:
            raise ValueError("the units Job needs completions >= 1 (the number of units)")
        spec.update(
            completionMode="Indexed",
            completions=completions,
            parallelism=min(template.parallelism or completions, completions),
            backoffLimitPerIndex=0,
        )
    else:
        spec.update(backoffLimit=0, completions=1, parallelism=1)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job_id, stage, attempt),
            "namespace": template.namespace,
            "labels": dict(job_labels),
        },
        "spec": spec,
    }
