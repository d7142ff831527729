"""The ``Executor`` protocol on Kubernetes Jobs: start, poll one stage after the other, cancel, adopt.

The design (why ``backoffLimit: 0``, why a restarted service adopts running Jobs, what the cluster must
provide) is in docs/kubernetes-executor.md; the Job objects come from manifest.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.training import experiment_stages as stages
from services.training.jobstore import JobRecord, JobStore
from services.training.k8s import failures
from services.training.k8s.cluster import Cluster, kubernetes_clients
from services.training.k8s.failures import api_error, api_status, job_phase, parse_indexes
from services.training.k8s.logs import JobLogs
from services.training.k8s.manifest import (
    ATTEMPT_LABEL,
    EXPERIMENT_STAGES,
    JOB_ID_LABEL,
    PLAIN_STAGES,
    SERIES_STAGES,
    STAGE_LABEL,
    JobTemplate,
    command,
    data_parallel_processes,
    job_manifest,
    job_name,
)

if TYPE_CHECKING:
    from services.training.settings import TrainingSettings

log = logging.getLogger("lesionsynth.training.k8s")


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
    """Each job is one Job (an experiment: prepare, an Indexed Job of units, [series], aggregate).

    ``batch_api`` / ``core_api`` are ``kubernetes.client.BatchV1Api`` / ``CoreV1Api`` (or test fakes with
    the same methods); :meth:`from_settings` builds the real ones from the in-cluster configuration.
    The keyword arguments after ``jobs_dir`` are the :class:`JobTemplate` every Job is built from.
    """

    def __init__(
        self,
        batch_api: Any,
        core_api: Any,
        *,
        store: JobStore,
        jobs_dir: str | Path,
        check_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        **template: Any,
    ):
        self.store, self.template = store, JobTemplate(**template)
        self.cluster = Cluster(batch_api, core_api, self.template.namespace)
        self.jobs_dir = Path(jobs_dir)
        self.check_seconds, self.clock = check_seconds, clock
        self.logs = JobLogs(self.jobs_dir, self.cluster)

    @classmethod
    def from_settings(cls, settings: TrainingSettings, store: JobStore, **kwargs) -> KubernetesExecutor:
        template = JobTemplate.from_settings(settings)
        batch, core = kubernetes_clients()
        return cls(batch, core, store=store, jobs_dir=settings.jobs_dir, **vars(template), **kwargs)

    @property
    def output_root(self) -> Path:
        return self.template.output_root

    # -- the Job objects ------------------------------------------------------------------------------

    def state_dir(self, job_id: str) -> Path:
        return stages.state_dir(self.output_root, job_id)

    def work_dir(self, job_id: str) -> Path:
        return self.state_dir(job_id) / stages.WORK

    def command(self, job_id: str, stage: str) -> list[str]:
        return command(self.template, job_id, stage)

    def plan(self, job: JobRecord) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the job's Kubernetes Jobs in order, the experiment's unit names)."""
        if job.type != "experiment":
            return PLAIN_STAGES, ()
        units, series = stages.experiment_plan(job.params, self.output_root, job.id)
        return (SERIES_STAGES if series else EXPERIMENT_STAGES), tuple(units)

    def _handle(self, job: JobRecord, attempt: int, stage_index: int = 0) -> KubernetesHandle:
        order, units = self.plan(job)
        return KubernetesHandle(
            job.id,
            job.type,
            order,
            attempt=attempt,
            stage_index=stage_index,
            units=units,
            processes=data_parallel_processes(job.type, job.params),
        )

    # -- the Executor protocol ------------------------------------------------------------------------

    def start(self, job: JobRecord) -> KubernetesHandle:
        handle = self._handle(job, job.attempts)
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
            k8s_job = self.cluster.read_job(handle.name)
        except Exception as exc:  # noqa: BLE001  (the API may be briefly unreachable: try again next poll)
            if api_status(exc) == 404:
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
            self.logs.note(handle.job_id, f"Job {handle.name} succeeded")
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
                self.logs.note(handle.job_id, f"service stopping: {handle.name} keeps running on the cluster")
            handle.detached = True
            return
        if not handle.deleting:
            self.logs.note(
                handle.job_id, "cancel: deleting the job's Kubernetes Jobs (propagationPolicy Background)"
            )
            handle.deleting = True
            handle.next_check = 0.0
        self._delete_all(handle.job_id)

    def reap_orphan(self, job: JobRecord) -> KubernetesHandle | None:
        """At service start, for each job the last service left running: a handle on its Jobs when they
        still run (adopted; docs/kubernetes-executor.md), else None (it ended and is recorded, or it has
        no Jobs left and the scheduler requeues it)."""
        try:
            k8s_jobs = self.cluster.jobs_of(job.id)
        except Exception as exc:  # noqa: BLE001  (then the job is requeued and starts a new attempt)
            log.warning("job %s: cannot list its Kubernetes Jobs: %s", job.id, api_error(exc))
            return None
        if job.cancel_requested:
            if k8s_jobs:
                self.logs.note(job.id, "cancel requested before the service restarted: deleting its Jobs")
                self._delete_all(job.id)
            return None
        if not k8s_jobs:
            # Finished while the service was down and already removed by the TTL: use what it recorded.
            result = stages.read_result(self.state_dir(job.id))
            if result is not None and self.store.finish(job.id, "succeeded", result=result):
                self.logs.note(job.id, "finished while the service was down; result recorded")
            return None
        handle = self._adoptable(job, k8s_jobs)
        code = self.poll(handle)  # records it now if it ended while the service was down
        if code is not None:
            return None
        self.logs.note(
            job.id, f"attempt {job.attempts}: still running on the cluster as {handle.name}; adopted"
        )
        log.info("job %s: adopted %s, still running on the cluster", job.id, handle.name)
        return handle

    def read_log(self, job_id: str, tail_bytes: int = 65536) -> str:
        """The job's log file (executor notes + archived pod logs), then the live logs of running pods."""
        return self.logs.read(job_id, tail_bytes)

    # -- internals ------------------------------------------------------------------------------------

    def _create(self, handle: KubernetesHandle) -> None:
        completions = len(handle.units) if handle.stage == "units" else None
        with contextlib.suppress(FileNotFoundError):  # the previous stage's bar is not this one's
            (self.state_dir(handle.job_id) / stages.PROGRESS).unlink()
        body = job_manifest(
            self.template,
            handle.job_id,
            handle.job_type,
            handle.stage,
            attempt=handle.attempt,
            completions=completions,
            processes=handle.processes,
        )
        try:
            self.cluster.create_job(body)
        except Exception as exc:
            if api_status(exc) != 409:
                raise RuntimeError(
                    f"creating the Kubernetes Job {handle.name} failed: {api_error(exc)}"
                ) from None
            existing = self.cluster.read_job(handle.name)
            if (existing.metadata.labels or {}).get(JOB_ID_LABEL) != handle.job_id:
                raise RuntimeError(
                    f"a Kubernetes Job named {handle.name} exists and is not this job's"
                ) from None
            self.logs.note(handle.job_id, f"Job {handle.name} already exists; using it")
            return
        extra = ""
        if handle.stage == "units":
            extra = f" ({len(handle.units)} units, parallelism {body['spec']['parallelism']})"
        self.logs.note(
            handle.job_id,
            f"attempt {handle.attempt}: {handle.job_type} job: created Job {handle.name}{extra} in {self.template.namespace}",
        )

    def _stage_pods(self, handle: KubernetesHandle) -> list[Any]:
        return self.cluster.pods(
            {JOB_ID_LABEL: handle.job_id, STAGE_LABEL: handle.stage, ATTEMPT_LABEL: str(handle.attempt)}
        )

    def _delete_all(self, job_id: str, only_active: bool = False) -> None:
        try:
            k8s_jobs = self.cluster.jobs_of(job_id)
        except Exception as exc:  # noqa: BLE001  (poll retries while the handle is "deleting")
            log.warning("job %s: cannot list its Jobs to delete them: %s", job_id, api_error(exc))
            return
        for k8s_job in k8s_jobs:
            if k8s_job.metadata.deletion_timestamp is not None:
                continue
            if only_active and job_phase(k8s_job)[0] != "active":
                continue  # finished: left to its TTL (kubectl can still show it)
            if only_active:
                self.logs.note(
                    job_id, f"deleting {k8s_job.metadata.name}, still running from an earlier attempt"
                )
            self.cluster.delete_job(k8s_job.metadata.name, job_id)

    def _poll_deleting(self, handle: KubernetesHandle) -> int | None:
        try:
            remaining = self.cluster.jobs_of(handle.job_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: cannot list its Jobs: %s", handle.job_id, api_error(exc))
            return None
        if remaining:
            self._delete_all(handle.job_id)  # again, in case a delete call failed
            return None
        self.logs.note(handle.job_id, "its Kubernetes Jobs are deleted")
        return -signal.SIGTERM

    def _adoptable(self, job: JobRecord, k8s_jobs: list[Any]) -> KubernetesHandle:
        """A handle on the newest attempt's latest stage among the job's existing Jobs."""
        order, _ = self.plan(job)

        def rank(k8s_job):
            labels = k8s_job.metadata.labels or {}
            stage = labels.get(STAGE_LABEL, order[0])
            return int(labels.get(ATTEMPT_LABEL, "1")), order.index(stage) if stage in order else 0

        attempt, stage_index = max(rank(j) for j in k8s_jobs)
        return self._handle(job, attempt, stage_index)

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
        try:
            pods = self._stage_pods(handle)
        except Exception:  # noqa: BLE001  (only a hint in the stage text)
            return None
        return failures.waiting_reason(pods)

    def _succeeded(self, handle: KubernetesHandle) -> int:
        result = stages.read_result(self.state_dir(handle.job_id))
        job = self.store.get(handle.job_id)
        if result is None or job is None or job.cancel_requested:
            # No result: the scheduler records "exited without recording a result".
            return 0
        self.store.finish(handle.job_id, "succeeded", result=result)
        self.logs.note(handle.job_id, f"Job {handle.name} succeeded")
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
        try:
            pods = self._stage_pods(handle)
        except Exception as exc:  # noqa: BLE001  (the Job's condition still says something)
            log.warning("job %s: cannot list pods: %s", handle.job_id, api_error(exc))
            pods = []
        text, code = failures.stage_failure(
            name=handle.name,
            stage=handle.stage,
            units=handle.units,
            k8s_job=k8s_job,
            condition=condition,
            pods=pods,
            memory=self.template.memory,
            deadline_seconds=self.template.deadline_seconds,
        )
        return self._record_failure(handle, text, code)

    def _record_failure(self, handle: KubernetesHandle, text: str, code: int) -> int:
        job = self.store.get(handle.job_id)
        if job is not None and not job.cancel_requested:  # a cancelled job is recorded by the scheduler
            self.store.finish(handle.job_id, "failed", error=text)
            self.logs.note(handle.job_id, f"failed: {text}")
        return code

    def _archive_logs(self, handle: KubernetesHandle) -> None:
        """Copy the finished stage's pod logs into the job's log file: pods go with the Job (TTL)."""
        if handle.name in self.logs.archived(handle.job_id):
            return
        try:
            pods = self._stage_pods(handle)
        except Exception as exc:  # noqa: BLE001
            self.logs.note(handle.job_id, f"could not archive the logs of {handle.name}: {api_error(exc)}")
            return
        self.logs.archive(handle.job_id, handle.name, pods)
