"""Training-job service settings (environment variables; table in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.errors import ConfigError
from services.common.settings import PREFIX, CommonSettings, env_bool, env_int, env_str
from services.harness import SERVICES

EXECUTORS = ("local", "kubernetes")
#: Where Kubernetes mounts the pod's own namespace (the default namespace for the Jobs).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "lesionsynth"


@dataclass(frozen=True)
class KubernetesSettings:
    """``LESIONSYNTH_EXECUTOR=kubernetes``: each job is a batch/v1 Job (services/training/k8s/).

    The Job pods mount the PVCs named here at the paths the service itself uses (its model store, output
    root and first data root), so every absolute path in a job's parameters means the same in the pod.
    """

    #: Namespace of the Jobs: LESIONSYNTH_K8S_NAMESPACE, else the service's own pod namespace.
    namespace: str
    #: The training image (LESIONSYNTH_K8S_IMAGE, required), e.g. registry/lesionsynth-training:0.1.0-gpu.
    image: str
    #: One nvidia.com/gpu per pod, with the GPU node selector and toleration (LESIONSYNTH_K8S_GPU=1).
    gpu: bool
    #: Pods of an experiment's Indexed Job at once; None = all of its units (LESIONSYNTH_K8S_PARALLELISM).
    parallelism: int | None
    model_store_claim: str
    datasets_claim: str
    outputs_claim: str
    #: Per pod (requests = limits, Guaranteed QoS): LESIONSYNTH_K8S_CPU, LESIONSYNTH_K8S_MEMORY.
    cpu: str
    memory: str
    #: activeDeadlineSeconds of every Job (an experiment: of each of its three Jobs).
    deadline_seconds: int
    #: ttlSecondsAfterFinished: finished Jobs (and their pods' logs) stay this long for kubectl.
    ttl_seconds: int
    image_pull_policy: str

    @classmethod
    def from_env(cls) -> KubernetesSettings:
        image = env_str("K8S_IMAGE")
        if not image:
            raise ConfigError(
                f"{PREFIX}K8S_IMAGE must name the training image when {PREFIX}EXECUTOR=kubernetes "
                "(e.g. registry.example.com/lesionsynth-training:0.1.0-gpu)"
            )
        parallelism = env_int("K8S_PARALLELISM", 0, minimum=0, maximum=10_000)
        pull = env_str("K8S_IMAGE_PULL_POLICY", "IfNotPresent")
        if pull not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                f"{PREFIX}K8S_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never, got {pull!r}"
            )
        return cls(
            namespace=env_str("K8S_NAMESPACE") or pod_namespace(),
            image=image,
            gpu=env_bool("K8S_GPU", False),
            parallelism=parallelism or None,
            model_store_claim=env_str("K8S_PVC_MODEL_STORE", "lesionsynth-model-store"),
            datasets_claim=env_str("K8S_PVC_DATASETS", "lesionsynth-datasets"),
            outputs_claim=env_str("K8S_PVC_OUTPUTS", "lesionsynth-outputs"),
            cpu=env_str("K8S_CPU", "4"),
            memory=env_str("K8S_MEMORY", "16Gi"),
            deadline_seconds=env_int("K8S_DEADLINE_S", 3 * 24 * 3600, minimum=60),
            ttl_seconds=env_int("K8S_TTL_S", 24 * 3600, minimum=0),
            image_pull_policy=pull,
        )


def pod_namespace(path: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The namespace this pod runs in (mounted by Kubernetes with the service account), else the default."""
    try:
        return path.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


@dataclass(frozen=True)
class TrainingSettings:
    common: CommonSettings
    #: SQLite job database, per-job work folders (checkpoints) and logs.
    jobs_dir: Path
    #: Folders jobs may read datasets and configs from (os.pathsep-separated); anything else is refused.
    data_roots: tuple[Path, ...]
    #: Where jobs write datasets and reports (``<output_root>/<job id>/``).
    output_root: Path
    model_store: Path
    max_concurrent_jobs: int
    #: "local" (a process per job) or "kubernetes" (a batch/v1 Job per job; see ``kubernetes``).
    executor: str
    #: Set when ``executor == "kubernetes"``.
    kubernetes: KubernetesSettings | None = None

    @classmethod
    def from_env(cls) -> TrainingSettings:
        roots = env_str("DATA_ROOTS", os.pathsep.join(["runs", "../shared/data"]))
        executor = env_str("EXECUTOR", "local")
        if executor not in EXECUTORS:
            raise ConfigError(f"{PREFIX}EXECUTOR must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        return cls(
            # job requests are small JSON: 1 MiB unless LESIONSYNTH_MAX_REQUEST_BYTES says otherwise
            common=CommonSettings.from_env(
                default_grpc_port=SERVICES["training"].grpc_port, default_max_request_bytes=1024 * 1024
            ),
            jobs_dir=Path(env_str("JOBS_DIR", "runs/jobs")).resolve(),
            data_roots=tuple(Path(p).resolve() for p in roots.split(os.pathsep) if p),
            output_root=Path(env_str("OUTPUT_ROOT", "runs/outputs")).resolve(),
            model_store=Path(env_str("MODEL_STORE", "runs/model-store")).resolve(),
            max_concurrent_jobs=env_int("MAX_CONCURRENT_JOBS", 1, minimum=1, maximum=64),
            executor=executor,
            kubernetes=KubernetesSettings.from_env() if executor == "kubernetes" else None,
        )
