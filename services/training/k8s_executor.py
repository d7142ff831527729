"""The Kubernetes executor: each training job becomes a ``batch/v1`` Job on the cluster.

``LESIONSYNTH_EXECUTOR=kubernetes`` (settings.py) makes the training service's scheduler run jobs through
:class:`KubernetesExecutor` instead of local processes; :func:`build_scheduler` picks the executor. The
scheduler is unchanged: it still claims queued jobs, polls, cancels and recovers through the ``Executor``
protocol (executor.py); only where the work runs differs.

How a job maps onto Kubernetes
------------------------------
- A job is one Job, ``lesionsynth-job-<id[:12]>`` (``-r<attempt>`` appended from the second attempt,
  so a resumed job never collides with the finished Job of an earlier attempt that Kubernetes still
  keeps). Its pod runs the training image (``LESIONSYNTH_K8S_IMAGE``) with
  ``python -m services.training.experiment_stages --stage job ...``, which runs the job type's ``run``
  exactly as the local worker does.
- An ``experiment`` is three Jobs, created one after the other by :meth:`KubernetesExecutor.poll`:
  ``-prepare`` (split, synthesizer, balanced manifest), then ``-units``, ONE Indexed Job
  (``completionMode: Indexed``, ``completions`` = the number of (strategy, seed) units, ``parallelism`` =
  ``LESIONSYNTH_K8S_PARALLELISM`` or all of them) whose pod with ``$JOB_COMPLETION_INDEX = i`` runs unit
  ``all_units(config)[i]``: strategy-major, ``i = strategy_index * n_seeds + seed_index``, the order
  ``lesionsynth experiment --unit-index`` uses; so N seeds of a strategy run on N GPUs at once. Then
  ``-aggregate``, which starts only after every unit succeeded.
- Where the aggregate finds the units: every pod mounts the same ReadWriteMany outputs volume at the
  service's own output root, and unit i writes ``<output_root>/<job id>/units/<strategy>/seed-<seed>/
  test_scores.json`` (models/experiment/units.py); ``aggregate_units`` reads exactly those files. The
  model store and datasets volumes are mounted at the service's paths too, so every absolute path in a
  job's (validated) parameters means the same inside the pod.
- The pods cannot reach the job database (it sits on the service's ReadWriteOnce volume, and SQLite must
  not be shared across nodes), so they report through files in the job's state folder on the outputs
  volume (experiment_stages.py: spec.json in, progress.json and result.json out) and through the
  container's termination message. The executor copies them into the job record while it polls.

Why ``backoffLimit: 0``
-----------------------
The scheduler, not Kubernetes, decides whether a job runs again, exactly as with local processes: a job
that fails (a bad manifest, out of memory, a bug) is recorded as failed with its reason, once, instead
of Kubernetes silently rerunning it up to six times (the default) on an expensive GPU. The Indexed Job
uses the per-index form, ``backoffLimitPerIndex: 0``: every unit is tried once, and one failing unit
does not stop the others (as in the local runner); the Job then fails with its failed indexes, which
the executor names as units ("synthetic/seed-3: out of memory (OOMKilled)"). The one exception is a
pod *disrupted* by the cluster (node drain, preemption: the ``DisruptionTarget`` condition), which a
``podFailurePolicy`` rule ignores, so its replacement resumes from the checkpoints on the shared volume;
``podReplacementPolicy: Failed`` makes sure the old pod is gone before the new one writes there.

Why a restarted service adopts Jobs instead of requeueing them
--------------------------------------------------------------
A local job process dies with the service (parent-death signal), so the local executor's
``reap_orphan`` kills leftovers and the restarted scheduler requeues the job to resume it from its
checkpoint. Pods do not die with the service: a Job keeps running on the cluster while the service
restarts (a rollout, a node drain). So :meth:`KubernetesExecutor.reap_orphan` *adopts* the job's
existing Jobs and returns a handle on them: the scheduler keeps the record "running" (same attempt:
the work was not restarted, so the restart does not count against ``max_attempts``) and polls the
handle as if it had started it, so the work on the cluster is never restarted or duplicated. A Job that
finished while the service was down is recorded from its status at once. Likewise, stopping the service does not delete the Jobs
(:meth:`~KubernetesExecutor.cancel` without a cancel request only detaches); only a user's cancel
deletes them (``propagationPolicy: Background``: the Job at once, its pods by the garbage collector).

Only a job whose Jobs are gone (deleted by hand, or unlistable because the API was down) is requeued as
a new attempt; a new attempt first deletes any Job of an earlier attempt that is still active, so two
attempts never write to the same checkpoints.

Status is polled (``read_namespaced_job`` at most every ``check_seconds``), not watched: the scheduler
drives the executor from one thread, and a poll after a restart sees the same state a watch would.

What the cluster must provide
-----------------------------
Kubernetes >= 1.29 (``backoffLimitPerIndex`` and ``podReplacementPolicy`` beta and on by default there,
GA in 1.33 / 1.34); Jobs are created with ``fieldValidation=Strict``, so an older API server refuses
them with the unknown field's name instead of dropping it. The service account may create, get, list
and delete Jobs and list pods and read pods/log (deploy/k8s/base/rbac-training.yaml). The model store
and outputs claims must be ReadWriteMany (pods on several nodes write them); for
``LESIONSYNTH_K8S_GPU=1``, the NVIDIA device plugin (``nvidia.com/gpu``) and GPU nodes labelled
``nvidia.com/gpu.present=true`` and tainted ``nvidia.com/gpu:NoSchedule``, as in the gpu overlay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.training import experiment_stages as stages
from services.training.executor import LOG_NAME, Executor, LocalProcessExecutor, exit_reason
from services.training.jobstore import JobRecord, JobStore, one_line

if TYPE_CHECKING:
    from models.jobs import JobRoots
    from services.training.scheduler import JobScheduler
    from services.training.settings import TrainingSettings

log = logging.getLogger("lesionsynth.training.k8s")

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
JOB_SERVICE_ACCOUNT = "lesionsynth-training-job"
MANAGED_BY = "app.kubernetes.io/managed-by"
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
POD_STAGE = {"job": "job", "prepare": "prepare", "units": "unit", "aggregate": "aggregate"}

GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
ARCHIVED_NAME = "k8s-archived-jobs.txt"
#: Container waiting reasons that a person must fix (shown in the job's stage while the pod waits).
STUCK_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
#: Pod logs kept in the job's log file when a Job ends (its pods go with the Job after the TTL).
ARCHIVE_BYTES_PER_POD = 4 * 1024 * 1024


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


def parse_indexes(text: str | None) -> list[int]:
    """Kubernetes' compressed index list ("1,3-5") as [1, 3, 4, 5]."""
    out: list[int] = []
    for part in filter(None, (text or "").split(",")):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def job_phase(k8s_job: Any) -> tuple[str, Any]:
    """("succeeded" | "failed" | "active", the deciding condition or None).

    Only the terminal conditions count (Complete, Failed): since Kubernetes 1.31 they are set once the
    Job's pods have terminated, so no pod of a finished stage still writes to the shared volume.
    """
    for condition in (k8s_job.status.conditions if k8s_job.status else None) or []:
        if condition.status == "True" and condition.type == "Complete":
            return "succeeded", condition
        if condition.status == "True" and condition.type == "Failed":
            return "failed", condition
    return "active", None


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None) if isinstance(exc, _api_exception()) else None


def api_error(exc: BaseException) -> str:
    """One line for an API error: status, reason and the server's message (not the headers)."""
    if not isinstance(exc, _api_exception()):
        return f"{type(exc).__name__}: {exc}"
    message = ""
    with contextlib.suppress(TypeError, ValueError):
        message = json.loads(exc.body or "{}").get("message", "")
    return one_line(f"{exc.status} {exc.reason}" + (f": {message}" if message else ""))


@dataclass
class KubernetesHandle:
    """What the scheduler holds for a job running on the cluster (``pid`` is None: no local process)."""

    job_id: str
    job_type: str
    stages: tuple[str, ...]
    attempt: int
    #: Index into ``stages`` of the Job that currently runs.
    stage_index: int = 0
    #: The experiment's unit names; index i is the pod with $JOB_COMPLETION_INDEX = i.
    units: tuple[str, ...] = ()
    #: Data-parallel processes of the pod (torchrun, models/torchrun.py): GPUs, CPU and memory x this.
    processes: int = 1
    next_check: float = 0.0
    #: cancel() deleted the Jobs; poll() reports the end once they are gone.
    deleting: bool = False
    #: The service is stopping: the Jobs keep running on the cluster; the next service adopts them.
    detached: bool = False
    pid: None = field(default=None, init=False)

    @property
    def stage(self) -> str:
        return self.stages[self.stage_index]

    @property
    def name(self) -> str:
        return job_name(self.job_id, self.stage, self.attempt)


class KubernetesExecutor:
    """The ``Executor`` protocol on Kubernetes Jobs (see the module docstring for the design).

    ``batch_api`` / ``core_api`` are ``kubernetes.client.BatchV1Api`` / ``CoreV1Api`` (or test fakes with
    the same methods); :meth:`from_settings` builds the real ones from the in-cluster configuration.
    """

    def __init__(
        self,
        batch_api: Any,
        core_api: Any,
        *,
        store: JobStore,
        namespace: str,
        image: str,
        jobs_dir: str | Path,
        store_root: str | Path,
        output_root: str | Path,
        datasets_root: str | Path | None = None,
        model_store_claim: str = "lesionsynth-model-store",
        datasets_claim: str = "lesionsynth-datasets",
        outputs_claim: str = "lesionsynth-outputs",
        gpu: bool = False,
        parallelism: int | None = None,
        cpu: str = "4",
        memory: str = "16Gi",
        deadline_seconds: int = 3 * 24 * 3600,
        ttl_seconds: int = 24 * 3600,
        image_pull_policy: str = "IfNotPresent",
        check_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.batch, self.core, self.store = batch_api, core_api, store
        self.namespace, self.image = namespace, image
        self.jobs_dir = Path(jobs_dir)
        self.store_root, self.output_root = Path(store_root), Path(output_root)
        self.datasets_root = Path(datasets_root) if datasets_root is not None else None
        self.claims = {"model-store": model_store_claim, "datasets": datasets_claim, "outputs": outputs_claim}
        self.gpu, self.parallelism = gpu, parallelism
        self.cpu, self.memory = cpu, memory
        self.deadline_seconds, self.ttl_seconds = deadline_seconds, ttl_seconds
        self.image_pull_policy = image_pull_policy
        self.check_seconds, self.clock = check_seconds, clock
        self._log_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: TrainingSettings, store: JobStore, **kwargs) -> KubernetesExecutor:
        k8s = settings.kubernetes
        if k8s is None:
            raise ValueError("settings.kubernetes is None: LESIONSYNTH_EXECUTOR is not 'kubernetes'")
        batch, core = kubernetes_clients()
        datasets = next(
            (
                r
                for r in settings.data_roots
                if r != settings.output_root and settings.output_root not in r.parents
            ),
            None,
        )
        return cls(
            batch,
            core,
            store=store,
            namespace=k8s.namespace,
            image=k8s.image,
            jobs_dir=settings.jobs_dir,
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
            **kwargs,
        )

    # -- the Job objects ------------------------------------------------------------------------------

    def labels(self, job_id: str, job_type: str, stage: str, attempt: int) -> dict[str, str]:
        return {
            PART_OF: "lesionsynth",
            COMPONENT: "training-job",
            MANAGED_BY: "lesionsynth-training",
            JOB_ID_LABEL: job_id,
            JOB_TYPE_LABEL: job_type,
            STAGE_LABEL: stage,
            ATTEMPT_LABEL: str(attempt),
        }

    def state_dir(self, job_id: str) -> Path:
        return stages.state_dir(self.output_root, job_id)

    def work_dir(self, job_id: str) -> Path:
        return self.state_dir(job_id) / stages.WORK

    def command(self, job_id: str, stage: str) -> list[str]:
        return [
            "python",
            "-m",
            "services.training.experiment_stages",
            *("--stage", POD_STAGE[stage], "--job", job_id),
            *("--state-dir", str(self.state_dir(job_id))),
            *("--store", str(self.store_root), "--output-root", str(self.output_root)),
        ]

    def build_job(
        self,
        job_id: str,
        job_type: str,
        stage: str = "job",
        *,
        attempt: int = 1,
        completions: int | None = None,
        processes: int = 1,
    ) -> Any:
        """The ``V1Job`` of one stage (``completions``: the number of units, for stage "units";
        ``processes``: a data-parallel job's torchrun processes, one GPU each, on one node)."""
        from kubernetes import client

        labels = self.labels(job_id, job_type, stage, attempt)
        cpu, memory = scale_quantity(self.cpu, processes), scale_quantity(self.memory, processes)
        threads = str(cpu_threads(cpu))
        env = {
            "LESIONSYNTH_JOB_ID": job_id,
            "LESIONSYNTH_MODEL_STORE": str(self.store_root),
            "LESIONSYNTH_OUTPUT_ROOT": str(self.output_root),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",
            "MPLCONFIGDIR": "/tmp/mpl",
            "HF_HUB_OFFLINE": "1",
            # The node's core count is not the pod's CPU limit: size torch's thread pools to the limit.
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        mounts = [
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
            client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            client.V1VolumeMount(name="model-store", mount_path=str(self.store_root)),
            client.V1VolumeMount(name="outputs", mount_path=str(self.output_root)),
        ]
        volumes = [
            client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit="8Gi")),
            # PyTorch data loader workers share tensors through /dev/shm (64 MiB by default in containers).
            client.V1Volume(
                name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit="2Gi")
            ),
            client.V1Volume(
                name="model-store",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=self.claims["model-store"]
                ),
            ),
            client.V1Volume(
                name="outputs",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=self.claims["outputs"]
                ),
            ),
        ]
        if self.datasets_root is not None:
            env["LESIONSYNTH_DATA_ROOTS"] = f"{self.datasets_root}:{self.output_root}"
            mounts.append(
                client.V1VolumeMount(name="datasets", mount_path=str(self.datasets_root), read_only=True)
            )
            volumes.append(
                client.V1Volume(
                    name="datasets",
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name=self.claims["datasets"], read_only=True
                    ),
                )
            )
        resources = {"cpu": cpu, "memory": memory}
        if self.gpu:
            resources[GPU_RESOURCE] = str(processes)
        container = client.V1Container(
            name=CONTAINER,
            image=self.image,
            image_pull_policy=self.image_pull_policy,
            command=self.command(job_id, stage),
            env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
            resources=client.V1ResourceRequirements(requests=dict(resources), limits=dict(resources)),
            security_context=client.V1SecurityContext(
                run_as_non_root=True,
                run_as_user=UID,
                run_as_group=UID,
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                capabilities=client.V1Capabilities(drop=["ALL"]),
            ),
            volume_mounts=mounts,
            # The stage writes its one-line failure there; a crash that wrote nothing leaves its log's tail.
            termination_message_policy="FallbackToLogsOnError",
        )
        pod = client.V1PodSpec(
            restart_policy="Never",
            containers=[container],
            volumes=volumes,
            # Its own ServiceAccount (deploy/k8s/base/serviceaccounts.yaml), with no token and no Role: the
            # job pods never call the Kubernetes API.
            service_account_name=JOB_SERVICE_ACCOUNT,
            automount_service_account_token=False,
            enable_service_links=False,
            termination_grace_period_seconds=30,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=UID,
                run_as_group=UID,
                fs_group=UID,
                fs_group_change_policy="OnRootMismatch",
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            node_selector=dict(GPU_NODE_SELECTOR) if self.gpu else None,
            tolerations=[client.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
            if self.gpu
            else None,
        )
        spec: dict[str, Any] = dict(
            active_deadline_seconds=self.deadline_seconds,
            ttl_seconds_after_finished=self.ttl_seconds,
            pod_replacement_policy="Failed",
            pod_failure_policy=client.V1PodFailurePolicy(
                rules=[
                    client.V1PodFailurePolicyRule(
                        action="Ignore",
                        on_pod_conditions=[
                            client.V1PodFailurePolicyOnPodConditionsPattern(
                                type="DisruptionTarget", status="True"
                            )
                        ],
                    )
                ]
            ),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=dict(labels)), spec=pod),
        )
        if stage == "units":
            if not completions or completions < 1:
                raise ValueError("the units Job needs completions >= 1 (the number of units)")
            spec.update(
                completion_mode="Indexed",
                completions=completions,
                parallelism=min(self.parallelism or completions, completions),
                backoff_limit_per_index=0,
            )
        else:
            spec.update(backoff_limit=0, completions=1, parallelism=1)
        return client.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=client.V1ObjectMeta(
                name=job_name(job_id, stage, attempt), namespace=self.namespace, labels=dict(labels)
            ),
            spec=client.V1JobSpec(**spec),
        )

    def experiment_units(self, job: JobRecord) -> tuple[str, ...]:
        return tuple(stages.unit_names(job.params, self.output_root, job.id))

    # -- the Executor protocol ------------------------------------------------------------------------

    def start(self, job: JobRecord) -> KubernetesHandle:
        experiment = job.type == "experiment"
        handle = KubernetesHandle(
            job.id,
            job.type,
            EXPERIMENT_STAGES if experiment else PLAIN_STAGES,
            attempt=job.attempts,
            units=self.experiment_units(job) if experiment else (),
            processes=data_parallel_processes(job.type, job.params),
        )
        # A new attempt: an earlier attempt's Job still running (one a restart could not adopt, say the API
        # was unreachable) would write to the same checkpoints.
        self._delete_all(job.id, only_active=True)
        folder = self.state_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        stages.clear_outcome(folder)
        stages.write_spec(folder, job.id, job.type, job.params)
        self._create(handle)
        return handle

    def poll(self, handle: KubernetesHandle) -> int | None:
        if handle.detached:
            return -signal.SIGTERM
        now = self.clock()
        if now < handle.next_check:
            return None
        handle.next_check = now + self.check_seconds
        if handle.deleting:
            return self._poll_deleting(handle)
        try:
            k8s_job = self.batch.read_namespaced_job(handle.name, self.namespace)
        except Exception as exc:  # noqa: BLE001  (the API may be briefly unreachable: try again next poll)
            if _status(exc) == 404:
                return self._vanished(handle)
            log.warning("job %s: reading Job %s failed: %s", handle.job_id, handle.name, api_error(exc))
            self._progress(handle, f"cannot read the Kubernetes Job {handle.name}: {api_error(exc)}", None)
            return None
        phase, condition = job_phase(k8s_job)
        if phase == "active":
            self._report_active(handle, k8s_job)
            return None
        self._archive_logs(handle)
        if phase == "failed":
            return self._failed(handle, k8s_job, condition)
        if handle.stage_index + 1 < len(handle.stages):
            self._note(handle.job_id, f"Job {handle.name} succeeded")
            handle.stage_index += 1
            try:
                self._create(handle)
            except Exception as exc:  # noqa: BLE001  (recorded on the job)
                return self._record_failure(
                    handle, f"could not create the Kubernetes Job {handle.name}: {exc}", 1
                )
            handle.next_check = 0.0
            return None
        return self._succeeded(handle)

    def cancel(self, handle: KubernetesHandle) -> None:
        job = self.store.get(handle.job_id)
        if job is None or not job.cancel_requested:
            # The scheduler stops every running job when the service stops; on a cluster the pods need
            # not stop with it: leave the Jobs running, the next service process adopts them.
            if not handle.detached:
                self._note(handle.job_id, f"service stopping: {handle.name} keeps running on the cluster")
            handle.detached = True
            return
        if not handle.deleting:
            self._note(
                handle.job_id, "cancel: deleting the job's Kubernetes Jobs (propagationPolicy Background)"
            )
            handle.deleting = True
            handle.next_check = 0.0
        self._delete_all(handle.job_id)

    def reap_orphan(self, job: JobRecord) -> KubernetesHandle | None:
        """At service start, for each job the last service left running: a handle on its Jobs when they
        still run (adopted; see the module docstring), else None (it ended and is recorded, or it has no
        Jobs left and the scheduler requeues it)."""
        try:
            k8s_jobs = self._list_jobs(job.id)
        except Exception as exc:  # noqa: BLE001  (then the job is requeued and starts a new attempt)
            log.warning("job %s: cannot list its Kubernetes Jobs: %s", job.id, api_error(exc))
            return None
        if job.cancel_requested:
            if k8s_jobs:
                self._note(job.id, "cancel requested before the service restarted: deleting its Jobs")
                self._delete_all(job.id)
            return None
        if not k8s_jobs:
            # Finished while the service was down and already removed by the TTL: use what it recorded.
            result = stages.read_result(self.state_dir(job.id))
            if result is not None and self.store.finish(job.id, "succeeded", result=result):
                self._note(job.id, "finished while the service was down; result recorded")
            return None
        handle = self._adoptable(job, k8s_jobs)
        code = self.poll(handle)  # records it now if it ended while the service was down
        if code is not None:
            return None
        self._note(job.id, f"attempt {job.attempts}: still running on the cluster as {handle.name}; adopted")
        log.info("job %s: adopted %s, still running on the cluster", job.id, handle.name)
        return handle

    def read_log(self, job_id: str, tail_bytes: int = 65536) -> str:
        """The job's log file (executor notes + archived pod logs), then the live logs of running pods."""
        tail_bytes = max(0, tail_bytes)
        parts = [self._read_log_file(job_id, tail_bytes)]
        archived = self._archived(job_id)
        try:
            pods = self._pods({JOB_ID_LABEL: job_id})
        except Exception as exc:  # noqa: BLE001  (the file's part is still worth returning)
            pods = []
            parts.append(f"=== live pod logs unavailable: {api_error(exc)} ===\n")
        for pod in pods:
            name = job_name(
                job_id,
                pod.metadata.labels.get(STAGE_LABEL, "job"),
                int(pod.metadata.labels.get(ATTEMPT_LABEL, "1")),
            )
            if name in archived:
                continue
            parts.append(self._pod_log(pod, tail_lines=min(10_000, max(100, tail_bytes // 40))))
        data = "".join(parts).encode()
        return data[len(data) - tail_bytes :].decode("utf-8", errors="replace") if tail_bytes else ""

    # -- internals ------------------------------------------------------------------------------------

    def _create(self, handle: KubernetesHandle) -> None:
        completions = len(handle.units) if handle.stage == "units" else None
        with contextlib.suppress(FileNotFoundError):  # the previous stage's bar is not this one's
            (self.state_dir(handle.job_id) / stages.PROGRESS).unlink()
        body = self.build_job(
            handle.job_id,
            handle.job_type,
            handle.stage,
            attempt=handle.attempt,
            completions=completions,
            processes=handle.processes,
        )
        try:
            # Strict: a cluster too old for a field (e.g. backoffLimitPerIndex) refuses the Job instead of
            # silently dropping the field (and with it, say, the "no Kubernetes retries" guarantee).
            self.batch.create_namespaced_job(self.namespace, body, field_validation="Strict")
        except Exception as exc:
            if _status(exc) != 409:
                raise RuntimeError(
                    f"creating the Kubernetes Job {handle.name} failed: {api_error(exc)}"
                ) from None
            existing = self.batch.read_namespaced_job(handle.name, self.namespace)
            if (existing.metadata.labels or {}).get(JOB_ID_LABEL) != handle.job_id:
                raise RuntimeError(
                    f"a Kubernetes Job named {handle.name} exists and is not this job's"
                ) from None
            self._note(handle.job_id, f"Job {handle.name} already exists; using it")
            return
        extra = ""
        if handle.stage == "units":
            extra = f" ({len(handle.units)} units, parallelism {body.spec.parallelism})"
        self._note(
            handle.job_id,
            f"attempt {handle.attempt}: {handle.job_type} job: created Job {handle.name}{extra} in {self.namespace}",
        )

    def _list_jobs(self, job_id: str) -> list[Any]:
        return list(
            self.batch.list_namespaced_job(
                self.namespace, label_selector=selector({JOB_ID_LABEL: job_id})
            ).items
        )

    def _pods(self, labels: dict[str, str]) -> list[Any]:
        pods = list(self.core.list_namespaced_pod(self.namespace, label_selector=selector(labels)).items)

        def order(pod):
            created = pod.metadata.creation_timestamp
            return (created.timestamp() if created else 0.0, _pod_index(pod) or 0, pod.metadata.name)

        return sorted(pods, key=order)

    def _stage_pods(self, handle: KubernetesHandle) -> list[Any]:
        return self._pods(
            {JOB_ID_LABEL: handle.job_id, STAGE_LABEL: handle.stage, ATTEMPT_LABEL: str(handle.attempt)}
        )

    def _delete_all(self, job_id: str, only_active: bool = False) -> None:
        try:
            k8s_jobs = self._list_jobs(job_id)
        except Exception as exc:  # noqa: BLE001  (poll retries while the handle is "deleting")
            log.warning("job %s: cannot list its Jobs to delete them: %s", job_id, api_error(exc))
            return
        for k8s_job in k8s_jobs:
            if k8s_job.metadata.deletion_timestamp is not None:
                continue
            if only_active and job_phase(k8s_job)[0] != "active":
                continue  # finished: left to its TTL (kubectl can still show it)
            if only_active:
                self._note(job_id, f"deleting {k8s_job.metadata.name}, still running from an earlier attempt")
            try:
                self.batch.delete_namespaced_job(
                    k8s_job.metadata.name, self.namespace, propagation_policy="Background"
                )
            except Exception as exc:  # noqa: BLE001
                if _status(exc) != 404:
                    log.warning(
                        "job %s: deleting %s failed: %s", job_id, k8s_job.metadata.name, api_error(exc)
                    )

    def _poll_deleting(self, handle: KubernetesHandle) -> int | None:
        try:
            remaining = self._list_jobs(handle.job_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: cannot list its Jobs: %s", handle.job_id, api_error(exc))
            return None
        if remaining:
            self._delete_all(handle.job_id)  # again, in case a delete call failed
            return None
        self._note(handle.job_id, "its Kubernetes Jobs are deleted")
        return -signal.SIGTERM

    def _adoptable(self, job: JobRecord, k8s_jobs: list[Any]) -> KubernetesHandle:
        """A handle on the newest attempt's latest stage among the job's existing Jobs."""
        experiment = job.type == "experiment"
        order = EXPERIMENT_STAGES if experiment else PLAIN_STAGES

        def rank(k8s_job):
            labels = k8s_job.metadata.labels or {}
            stage = labels.get(STAGE_LABEL, order[0])
            return int(labels.get(ATTEMPT_LABEL, "1")), order.index(stage) if stage in order else 0

        attempt, stage_index = max(rank(j) for j in k8s_jobs)
        return KubernetesHandle(
            job.id,
            job.type,
            order,
            attempt=attempt,
            stage_index=stage_index,
            units=self.experiment_units(job) if experiment else (),
            processes=data_parallel_processes(job.type, job.params),
        )

    def _progress(self, handle: KubernetesHandle, stage: str, fraction: float | None) -> None:
        job = self.store.get(handle.job_id)
        if job is None:
            return
        self.store.update_progress(handle.job_id, stage, job.progress if fraction is None else fraction)

    def _report_active(self, handle: KubernetesHandle, k8s_job: Any) -> None:
        status = k8s_job.status
        if handle.stage == "units":
            n = len(handle.units)
            done = status.succeeded or 0
            failed = len(parse_indexes(status.failed_indexes))
            text = f"experiment units: {done}/{n} done, {status.active or 0} running" + (
                f", {failed} failed" if failed else ""
            )
            fraction: float | None = done / n if n else 0.0
        else:
            reported = stages.read_progress(self.state_dir(handle.job_id))
            prefix = "" if handle.stage == "job" else f"{handle.stage}: "
            text, fraction = reported if reported else (f"{prefix}starting", None)
        pending = not status.active or (status.ready or 0) < status.active
        waiting = self._waiting_reason(handle) if pending else None
        self._progress(handle, f"{text} ({waiting})" if waiting else text, fraction)

    def _waiting_reason(self, handle: KubernetesHandle) -> str | None:
        """Why a pod of the stage is not running yet: unschedulable (no free GPU?), image pull errors."""
        try:
            pods = self._stage_pods(handle)
        except Exception:  # noqa: BLE001  (only a hint in the stage text)
            return None
        for pod in pods:
            for condition in (pod.status.conditions or []) if pod.status else []:
                if condition.type == "PodScheduled" and condition.status == "False":
                    return one_line(f"waiting for a node: {condition.reason}: {condition.message or ''}")[
                        :160
                    ]
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is not None and waiting.reason in STUCK_REASONS:
                    return one_line(f"{waiting.reason}: {waiting.message or ''}")[:160]
        return None

    def _succeeded(self, handle: KubernetesHandle) -> int:
        result = stages.read_result(self.state_dir(handle.job_id))
        job = self.store.get(handle.job_id)
        if result is None or job is None or job.cancel_requested:
            # No result: the scheduler records "exited without recording a result".
            return 0
        self.store.finish(handle.job_id, "succeeded", result=result)
        self._note(handle.job_id, f"Job {handle.name} succeeded")
        return 0

    def _vanished(self, handle: KubernetesHandle) -> int:
        """The Job is gone, and not by our cancel (deleted with kubectl, or the TTL ran out unseen)."""
        job = self.store.get(handle.job_id)
        if job is not None and job.cancel_requested:
            return -signal.SIGTERM
        if handle.stage_index + 1 == len(handle.stages) and stages.read_result(self.state_dir(handle.job_id)):
            return self._succeeded(handle)
        return self._record_failure(
            handle, f"the Kubernetes Job {handle.name} disappeared (deleted outside the training service?)", 1
        )

    def _failed(self, handle: KubernetesHandle, k8s_job: Any, condition: Any) -> int:
        reason = getattr(condition, "reason", None) or ""
        try:
            pods = self._stage_pods(handle)
        except Exception as exc:  # noqa: BLE001  (the Job's condition still says something)
            log.warning("job %s: cannot list pods: %s", handle.job_id, api_error(exc))
            pods = []
        failures = [
            (p, *f) for p in pods if p.status and p.status.phase == "Failed" and (f := self._pod_failure(p))
        ]
        code = failures[0][2] if failures else 1
        if reason == "DeadlineExceeded":
            text = (
                f"the Kubernetes Job {handle.name} ran longer than its deadline "
                f"({self.deadline_seconds} s, LESIONSYNTH_K8S_DEADLINE_S) and was stopped"
            )
            code = -signal.SIGKILL if code == 1 else code
        elif handle.stage == "units" and handle.units:
            failed = parse_indexes(k8s_job.status.failed_indexes) or sorted(
                i for p, *_ in failures if (i := _pod_index(p)) is not None
            )
            by_index = {_pod_index(p): text for p, text, _ in failures}
            named = [
                f"{handle.units[i] if i < len(handle.units) else f'index {i}'}: {by_index.get(i, 'failed')}"
                for i in failed
            ]
            text = f"{len(failed)} of {len(handle.units)} experiment units failed: " + "; ".join(named)
            if not named:
                text = f"the experiment's units Job {handle.name} failed ({reason or 'no reason given'})"
        elif failures:
            text = failures[0][1]
            if handle.stage != "job":
                text = f"experiment stage {handle.stage}: {text}"
        else:
            message = getattr(condition, "message", None)
            text = f"the Kubernetes Job {handle.name} failed ({reason or 'no reason given'}{': ' + message if message else ''})"
        return self._record_failure(handle, text, code)

    def _pod_failure(self, pod: Any) -> tuple[str, int] | None:
        """(one line, exit status in the scheduler's convention) for a failed pod, or None."""
        for cs in pod.status.container_statuses or []:
            terminated = cs.state.terminated if cs.state else None
            if cs.name != CONTAINER or terminated is None:
                continue
            if terminated.reason == "OOMKilled":
                return (
                    f"out of memory: the container was OOMKilled (memory limit {self.memory}, LESIONSYNTH_K8S_MEMORY)",
                    -signal.SIGKILL,
                )
            code = terminated.exit_code or 1
            if code > 128 and terminated.signal is None:
                code = -(code - 128)  # 137: killed by SIGKILL, in the scheduler's convention
            lines = [line.strip() for line in (terminated.message or "").splitlines() if line.strip()]
            # Our stage writes one line; a crash leaves the log's tail (FallbackToLogsOnError): its last line.
            return (lines[-1] if lines else exit_reason(code)), code
        if pod.status.reason:
            return one_line(f"{pod.status.reason}: {pod.status.message or ''}"), 1
        return None

    def _record_failure(self, handle: KubernetesHandle, text: str, code: int) -> int:
        job = self.store.get(handle.job_id)
        if job is not None and not job.cancel_requested:  # a cancelled job is recorded by the scheduler
            self.store.finish(handle.job_id, "failed", error=text)
            self._note(handle.job_id, f"failed: {text}")
        return code

    # -- logs -----------------------------------------------------------------------------------------

    def _log_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / LOG_NAME

    def _note(self, job_id: str, text: str) -> None:
        """A line from the executor in the job's log file (as the local executor writes one)."""
        log.info("job %s: %s", job_id, text)
        line = f"=== {datetime.now(UTC).isoformat(timespec='seconds')} {text} ===\n"
        self._append(job_id, line)

    def _append(self, job_id: str, text: str) -> None:
        path = self._log_path(job_id)
        with self._log_lock, contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)

    def _read_log_file(self, job_id: str, tail_bytes: int) -> str:
        try:
            with open(self._log_path(job_id), "rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - tail_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _archived(self, job_id: str) -> set[str]:
        try:
            return set((self.jobs_dir / job_id / ARCHIVED_NAME).read_text().split())
        except OSError:
            return set()

    def _pod_log(self, pod: Any, **kwargs) -> str:
        index = _pod_index(pod)
        header = (
            f"=== pod {pod.metadata.name}" + (f" (index {index})" if index is not None else "") + " ===\n"
        )
        try:
            text = self.core.read_namespaced_pod_log(
                pod.metadata.name, self.namespace, container=CONTAINER, _request_timeout=30, **kwargs
            )
        except Exception as exc:  # noqa: BLE001  (a pod still being created has no log yet)
            text = f"(no log: {api_error(exc)})"
        text = text or ""
        return header + text + ("" if text.endswith("\n") or not text else "\n")

    def _archive_logs(self, handle: KubernetesHandle) -> None:
        """Copy the finished stage's pod logs into the job's log file: pods go with the Job (TTL)."""
        if handle.name in self._archived(handle.job_id):
            return
        try:
            pods = self._stage_pods(handle)
        except Exception as exc:  # noqa: BLE001
            self._note(handle.job_id, f"could not archive the logs of {handle.name}: {api_error(exc)}")
            return
        self._append(
            handle.job_id, "".join(self._pod_log(p, limit_bytes=ARCHIVE_BYTES_PER_POD) for p in pods)
        )
        archived = self.jobs_dir / handle.job_id / ARCHIVED_NAME
        with self._log_lock, contextlib.suppress(OSError), open(archived, "a", encoding="utf-8") as fh:
            fh.write(handle.name + "\n")


def _pod_index(pod: Any) -> int | None:
    meta = pod.metadata
    raw = (meta.labels or {}).get(INDEX_KEY) or (meta.annotations or {}).get(INDEX_KEY)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def kubernetes_clients() -> tuple[Any, Any]:
    """``(BatchV1Api, CoreV1Api)`` from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    from models.errors import ConfigError

    try:
        config.load_incluster_config()
    except config.ConfigException as in_cluster:
        try:
            config.load_kube_config()
        except Exception as exc:  # noqa: BLE001  (no cluster to talk to: stop the service with the reason)
            raise ConfigError(
                "LESIONSYNTH_EXECUTOR=kubernetes needs the Kubernetes API: no in-cluster service account "
                f"({in_cluster}) and no usable kubeconfig ({exc})"
            ) from None
    return client.BatchV1Api(), client.CoreV1Api()


def build_executor(settings: TrainingSettings, store: JobStore) -> Executor:
    """The executor ``LESIONSYNTH_EXECUTOR`` names: local processes, or Kubernetes Jobs."""
    if settings.executor == "kubernetes":
        return KubernetesExecutor.from_settings(settings, store)
    return LocalProcessExecutor(
        settings.jobs_dir,
        db_path=store.db_path,
        store_root=settings.model_store,
        output_root=settings.output_root,
    )


def build_scheduler(
    settings: TrainingSettings, roots: JobRoots, *, max_attempts: int = 3, **kwargs
) -> JobScheduler:
    """The service's scheduler: ``jobs_dir/jobs.db`` and the executor the settings choose."""
    from services.training.scheduler import DB_NAME, JobScheduler

    store = JobStore(settings.jobs_dir / DB_NAME)
    executor = build_executor(settings, store)
    return JobScheduler(
        store, executor, settings.max_concurrent_jobs, roots=roots, max_attempts=max_attempts, **kwargs
    )
