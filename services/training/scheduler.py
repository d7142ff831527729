"""The job scheduler: one background thread that runs queued jobs through an executor.

Each pass (every ``poll_seconds``, or at once after a submit or cancel) it

1. polls the running jobs: asks the executor to stop those whose cancel was requested, and records the
   end of those whose process ended without recording it (cancelled, or failed with the exit reason:
   "killed by SIGKILL (out of memory?)", "exited with code 3");
2. starts queued jobs, oldest first, up to ``max_concurrent``.

On :meth:`JobScheduler.start` it takes the data directory lock (one service per job database), stops
any process still left from a previous service and calls ``recover_after_restart``: resumable jobs that
were running are queued again (they continue from their checkpoints), others are marked interrupted.
:meth:`JobScheduler.stop` stops the running job processes but leaves them "running" in the database, so
the next start resumes them: a service restart loses no job.

:func:`build_scheduler` is the one way to make the service's scheduler: the job database under
``jobs_dir`` and the executor ``LESIONSYNTH_EXECUTOR`` names (local processes, or Kubernetes Jobs:
services/training/k8s/, imported only then).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from models.errors import ConfigError
from models.jobs import JOB_TYPES, JobRoots, job_type
from services.training.executor import Executor, LocalProcessExecutor, exit_reason
from services.training.jobstore import JobRecord, JobStore

if TYPE_CHECKING:
    from services.training.settings import KubernetesSettings

log = logging.getLogger("lesionsynth.training")

DB_NAME = "jobs.db"
LOCK_NAME = ".lock"


class DataDirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``: two services sharing one job database would run every
    job twice and each requeue the other's running jobs. Released when the process exits, however."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another training service is using {self.path.parent} (it holds {self.path}); "
                "give each service its own data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class JobScheduler:
    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        max_concurrent: int = 1,
        *,
        roots: JobRoots,
        lock_dir: str | Path | None = None,
        poll_seconds: float = 0.5,
        max_attempts: int = 3,
        stop_grace_seconds: float = 10.0,
    ):
        if max_concurrent < 1:
            raise ConfigError("max_concurrent must be >= 1")
        self.store = store
        self.executor = executor
        self.max_concurrent = max_concurrent
        self.roots = roots
        self.poll_seconds = poll_seconds
        self.max_attempts = max_attempts
        self.stop_grace_seconds = stop_grace_seconds
        self.lock = DataDirLock(lock_dir if lock_dir is not None else store.db_path.parent)
        self._running: dict[str, Any] = {}
        self._cancelling: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def local(
        cls,
        data_dir: str | Path,
        roots: JobRoots,
        model_store: str | Path,
        max_concurrent: int = 1,
        **kwargs,
    ) -> JobScheduler:
        """:func:`build_scheduler` for local job processes, from paths instead of the service's settings:
        ``data_dir/jobs.db``, ``data_dir/<id>/`` per job (tests, scripts)."""
        paths = LocalPaths(Path(data_dir), Path(model_store), roots.output_root, max_concurrent)
        return build_scheduler(paths, roots, **kwargs)

    # -- the API ----------------------------------------------------------------------------------

    def submit(self, type: str, params: dict) -> JobRecord:  # noqa: A002
        """Validate (ParameterError / ConfigError naming the bad field) and queue a job."""
        normalised = job_type(type).validate(params, self.roots)
        job = self.store.create(type, normalised)
        log.info("job %s queued (%s)", job.id, type)
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job; idempotent (a finished job is returned unchanged). A running job is stopped by
        the scheduler thread within about ``poll_seconds``; it is "cancelled" once its process ended."""
        job = self.store.request_cancel(job_id)
        self._wake.set()
        return job

    def get(self, job_id: str) -> JobRecord:
        return self.store.require(job_id)

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        self.store.require(job_id)
        return self.executor.read_log(job_id, tail_bytes)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Lock the data directory, recover jobs a previous service left running, start the thread."""
        if self._thread is not None:
            return
        self.lock.acquire()
        try:
            self.recover()
        except BaseException:
            self.lock.release()
            raise
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)
        self._thread.start()

    def recover(self) -> list[str]:
        """Jobs a previous service left running: adopted when the executor says their work still runs
        (they stay "running", same attempt, and are polled from now on), else requeued or interrupted."""
        adopted = {}
        for job in self.store.list(state="running", limit=1_000_000):
            handle = self.executor.reap_orphan(job)
            if handle is not None:
                adopted[job.id] = handle
        self._running.update(adopted)
        resumable = {name for name, t in JOB_TYPES.items() if t.resumable}
        touched = self.store.recover_after_restart(
            resumable, max_attempts=self.max_attempts, adopted=set(adopted)
        )
        for job_id in adopted:
            log.info("job %s was running when the service stopped: adopted, still running", job_id)
        for job_id in touched:
            job = self.store.get(job_id)
            log.info("job %s was running when the service stopped: now %s", job_id, job.state if job else "?")
        return [*adopted, *touched]

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and the running job processes; they stay "running" in the database, so the
        next start resumes them. Waits up to ``timeout`` (default: the grace period + 5 s)."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout if timeout is not None else self.stop_grace_seconds + 5.0)
        self._thread = None
        self.lock.release()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001  (e.g. a locked database: try again next pass)
                log.exception("scheduler pass failed; retrying")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
        self._stop_running()

    def _stop_running(self) -> None:
        """Service shutdown: stop every job process (from this thread, which started them)."""
        for handle in self._running.values():
            self.executor.cancel(handle)
        deadline = time.monotonic() + self.stop_grace_seconds
        while self._running and time.monotonic() < deadline:
            for job_id, handle in list(self._running.items()):
                if self.executor.poll(handle) is not None:
                    del self._running[job_id]
            time.sleep(0.05)
        self._running.clear()
        self._cancelling.clear()

    # -- one pass ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """One scheduling pass (the thread calls it; tests may too, with the thread not started)."""
        for job_id, handle in list(self._running.items()):
            job = self.store.get(job_id)
            if job is not None and job.cancel_requested and job_id not in self._cancelling:
                log.info("job %s: cancelling", job_id)
                self.executor.cancel(handle)
                self._cancelling.add(job_id)
            code = self.executor.poll(handle)
            if code is None:
                continue
            self._record_exit(job_id, code)  # before forgetting the handle: a failed write is retried
            del self._running[job_id]
            self._cancelling.discard(job_id)

        while len(self._running) < self.max_concurrent and not self._stopping.is_set():
            job = self.store.claim_next_queued()
            if job is None:
                break
            try:
                handle = self.executor.start(job)
            except Exception as exc:  # noqa: BLE001  (recorded on the job; the service goes on)
                log.exception("job %s: could not start", job.id)
                self.store.finish(job.id, "failed", error=f"could not start the job process: {exc}")
                continue
            self._running[job.id] = handle  # tracked first: a failing database write must not orphan it
            self.store.set_running(job.id, getattr(handle, "pid", None))
            log.info("job %s started (%s, attempt %d)", job.id, job.type, job.attempts)

    def _record_exit(self, job_id: str, code: int) -> None:
        """The process ended: if the job did not record its own end, record it from the exit status."""
        job = self.store.get(job_id)
        if job is None or job.finished:
            if job is not None:
                log.info("job %s %s", job_id, job.state)
            if job is not None and job.state == "succeeded":
                self._discard_work(job_id)
            return
        if job.cancel_requested:
            self.store.cancel(job_id)
        elif code == 0:
            self.store.finish(job_id, "failed", error="the job process exited without recording a result")
        else:
            self.store.finish(job_id, "failed", error=exit_reason(code))
        log.info("job %s %s (%s)", job_id, self.store.get(job_id).state, exit_reason(code))

    def _discard_work(self, job_id: str) -> None:
        """A succeeded job's scratch folder: what it made is in the model store or its output folder, so
        what is left (a copy of the published model, an ONNX export's two graphs) only fills the volume.
        Failed, cancelled and interrupted jobs keep theirs, for a look and for a rerun to resume."""
        work = self.executor.work_dir(job_id)
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            log.warning("job %s: could not remove its work folder", job_id)

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)


class SchedulerSettings(Protocol):
    """What :func:`build_scheduler` reads: ``TrainingSettings`` (the service) or :class:`LocalPaths`."""

    jobs_dir: Path
    model_store: Path
    output_root: Path
    max_concurrent_jobs: int
    executor: str
    kubernetes: KubernetesSettings | None


@dataclass(frozen=True)
class LocalPaths:
    """The settings of a scheduler with local job processes, given as paths (:meth:`JobScheduler.local`)."""

    jobs_dir: Path
    model_store: Path
    output_root: Path
    max_concurrent_jobs: int = 1
    executor: str = "local"
    kubernetes: None = None


def build_executor(settings: SchedulerSettings, store: JobStore) -> Executor:
    """The executor ``settings.executor`` names: local processes, or Kubernetes Jobs."""
    if settings.executor == "kubernetes":
        from services.training.k8s import KubernetesExecutor

        return KubernetesExecutor.from_settings(settings, store)  # type: ignore[arg-type]
    return LocalProcessExecutor(
        settings.jobs_dir,
        db_path=store.db_path,
        store_root=settings.model_store,
        output_root=settings.output_root,
    )


def build_scheduler(settings: SchedulerSettings, roots: JobRoots, **kwargs) -> JobScheduler:
    """The scheduler: ``jobs_dir/jobs.db`` and the executor the settings choose (``kwargs``: the
    :class:`JobScheduler` options, e.g. ``poll_seconds``, ``max_attempts``)."""
    store = JobStore(Path(settings.jobs_dir) / DB_NAME)
    executor = build_executor(settings, store)
    return JobScheduler(store, executor, settings.max_concurrent_jobs, roots=roots, **kwargs)
