"""Executors: how a job's process is started, watched and stopped.

The scheduler only ever talks to the small :class:`Executor` protocol, so where jobs run is pluggable:
:class:`LocalProcessExecutor` runs each job as a child process of the service; the Kubernetes executor
(services/training/k8s/) creates a Job per job. Whatever the executor, the job's
own process records its progress and its end in the job database (services/training/worker.py); the
executor only reports how the process ended, which the scheduler uses when the job could not say so
itself (killed, out of memory, crashed interpreter).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from services.training.jobstore import JobRecord

LOG_NAME = "log.txt"
WORK_NAME = "work"
#: Set in every job process (and inherited by its children), so the processes of a job can be found
#: and stopped after a restart of the service without trusting a possibly reused pid.
JOB_ENV = "LESIONSYNTH_JOB_ID"
REPO = Path(__file__).resolve().parents[2]


class Executor(Protocol):
    """Called from the scheduler's thread only.

    - ``start(job) -> handle``: launch the worker for ``job`` (already marked running); the handle has
      ``job_id`` and ``pid`` (None when there is no local process id) attributes.
    - ``poll(handle) -> int | None``: None while it runs; then its exit status: 0 ok, > 0 an exit code,
      < 0 minus the signal that killed it (subprocess' convention). Also escalates a pending cancel.
    - ``cancel(handle)``: ask the job's processes to stop (graceful first, forced after a grace period);
      returns at once, ``poll`` reports the end.
    - ``reap_orphan(job) -> handle | None``: called at service start for each job a previous service
      process left running. Either make sure none of its processes still runs and return None (the
      scheduler then requeues or interrupts it), or, when its work survives the service and is still
      running (Kubernetes Jobs), adopt it and return a handle: the job stays "running", same attempt.
    - ``read_log(job_id, tail_bytes) -> str``: the end of the job's log.
    - ``work_dir(job_id) -> Path``: the job's scratch folder (checkpoints, a model before it is published),
      kept across attempts so a rerun resumes; the scheduler deletes it once the job succeeded.
    """

    def start(self, job: JobRecord) -> Any: ...

    def poll(self, handle: Any) -> int | None: ...

    def cancel(self, handle: Any) -> None: ...

    def reap_orphan(self, job: JobRecord) -> Any | None: ...

    def read_log(self, job_id: str, tail_bytes: int = 65536) -> str: ...

    def work_dir(self, job_id: str) -> Path: ...


def exit_reason(code: int) -> str:
    """A person's reading of an exit status (for a job that ended without recording why)."""
    if code < 0:
        if -code == signal.SIGKILL:
            return "killed by SIGKILL (out of memory?)"
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class LocalHandle:
    job_id: str
    process: subprocess.Popen
    log: IO[bytes]
    kill_at: float | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.process.pid


class LocalProcessExecutor:
    """Each job runs as ``python -m services.training.worker ...`` in its own session (process group).

    Layout under ``jobs_dir``: ``<id>/log.txt`` (the job's stdout and stderr, appended across attempts)
    and ``<id>/work/`` (its checkpoints, kept across attempts so a rerun resumes; the scheduler deletes it
    when the job succeeded).

    The worker asks the kernel to SIGKILL it when the service dies (``PR_SET_PDEATHSIG``, see
    worker.py), so a killed service leaves no job running unsupervised; the restarted service resumes it
    from its checkpoint. The kernel sends that signal when the *thread* that started the process ends,
    so jobs must be started from a thread that lives as long as the service (the scheduler's).
    """

    def __init__(
        self,
        jobs_dir: str | Path,
        *,
        db_path: str | Path,
        store_root: str | Path,
        output_root: str | Path,
        grace_seconds: float = 10.0,
        python: str = sys.executable,
    ):
        self.jobs_dir = Path(jobs_dir)
        self.db_path = Path(db_path)
        self.store_root = Path(store_root)
        self.output_root = Path(output_root)
        self.grace_seconds = grace_seconds
        self.python = python

    def log_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / LOG_NAME

    def work_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / WORK_NAME

    def command(self, job_id: str) -> list[str]:
        return [
            self.python,
            "-m",
            "services.training.worker",
            "--db",
            str(self.db_path),
            "--job",
            job_id,
            "--jobs-dir",
            str(self.jobs_dir),
            "--store",
            str(self.store_root),
            "--output-root",
            str(self.output_root),
            "--parent-pid",
            str(os.getpid()),
        ]

    def start(self, job: JobRecord) -> LocalHandle:
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(job.id), "ab")  # noqa: SIM115  (closed by poll when the process ends)
        _note(log, f"attempt {job.attempts}: {job.type} job {job.id}")
        env = {
            **os.environ,
            JOB_ENV: job.id,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        try:
            process = subprocess.Popen(
                self.command(job.id),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job_dir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            log.close()
            raise
        return LocalHandle(job.id, process, log)

    def poll(self, handle: LocalHandle) -> int | None:
        if handle.process.returncode is None:
            if not _exited(handle.pid):
                if handle.kill_at is not None and time.monotonic() >= handle.kill_at:
                    self._signal_group(handle.pid, signal.SIGKILL)
                    handle.kill_at = None
                return None
            # Not reaped yet, so its pid (= the group id) cannot be reused: whatever the job started in
            # its group (e.g. an experiment's unit processes) is stopped with it, and nothing else.
            self._signal_group(handle.pid, signal.SIGKILL)
        code = handle.process.wait()
        _note(handle.log, f"process ended: {exit_reason(code) if code else 'exit code 0'}")
        handle.log.close()
        return code

    def cancel(self, handle: LocalHandle) -> None:
        if handle.process.returncode is None and not _exited(handle.pid):
            _note(handle.log, f"stopping: SIGTERM (SIGKILL in {self.grace_seconds:g} s if still running)")
            self._signal_group(handle.pid, signal.SIGTERM)
            if handle.kill_at is None:
                handle.kill_at = time.monotonic() + self.grace_seconds

    def reap_orphan(self, job: JobRecord) -> None:
        """A job process dies with the service (parent-death signal); kill any that did not: never adopt."""
        pids = processes_of_job(job.id)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)

    def read_log(self, job_id: str, tail_bytes: int = 65536) -> str:
        return read_tail(self.log_path(job_id), tail_bytes)

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def note_line(text: str) -> str:
    """A line from an executor in a job's log file, as every executor writes it (timestamped, framed)."""
    return f"=== {datetime.now(UTC).isoformat(timespec='seconds')} {text} ===\n"


def read_tail(path: Path, tail_bytes: int) -> str:
    """The last ``tail_bytes`` of a job's log file ("" when it does not exist yet)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max(0, tail_bytes)))
            return fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _note(log: IO[bytes], text: str) -> None:
    """A line from the executor in the job's log (the process writes to the same file, O_APPEND)."""
    with contextlib.suppress(OSError, ValueError):
        log.write(note_line(text).encode())
        log.flush()


def processes_of_job(job_id: str) -> list[int]:
    """Pids of live processes whose environment names ``job_id`` (Linux /proc; [] elsewhere)."""
    marker = f"{JOB_ENV}={job_id}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has ended, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
