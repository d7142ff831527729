"""The job process: run one job and record its progress and its end in the job database.

    python -m services.training.worker --db DB --job ID --jobs-dir DIR --store ROOT --output-root ROOT

Started by an executor (executor.py); its stdout and stderr are the job's log. It records:

- progress: every tqdm bar of the recipes (models.progress) becomes the job's ``stage`` and ``progress``;
- success: state ``succeeded`` and the job's result; exit code 0;
- failure: state ``failed`` and one line saying why: a user error's own message (a LesionsynthError:
  bad manifest, missing label, model that fails its sha256 ...), or ``internal error: <ExcType>`` for a
  bug, whose traceback goes to the log only; exit code 1.

If the process is killed (cancel, out of memory, the service dying) it records nothing; the scheduler
then records the end from the exit status, or resumes the job after a restart.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

log = logging.getLogger("lesionsynth.worker")

PR_SET_PDEATHSIG = 1
EXIT_FAILED = 1
EXIT_NOT_RUNNABLE = 3


def die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this process when the service that started it dies (Linux).

    Done here rather than in the service between fork and exec: running Python code in a freshly forked
    child of a multi-threaded server can deadlock. If the parent died before this call, exit now.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not set the parent-death signal (errno %d)", ctypes.get_errno())
    if parent_pid is not None and os.getppid() != parent_pid:
        log.error("the service that started this job is gone; exiting")
        sys.exit(EXIT_NOT_RUNNABLE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="services.training.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="the job database (SQLite)")
    parser.add_argument("--job", required=True, help="the id of the job to run")
    parser.add_argument("--jobs-dir", required=True, type=Path, help="per-job folders (<id>/work)")
    parser.add_argument("--store", required=True, type=Path, help="the model store root")
    parser.add_argument("--output-root", required=True, type=Path, help="where jobs write their outputs")
    parser.add_argument("--parent-pid", type=int, default=None, help="the service's pid")
    return parser.parse_args(argv)


class ProgressRecorder:
    """The progress sink: writes (stage, fraction) to the job record, and each new stage to the log."""

    def __init__(self, jobs, job_id: str):
        self.jobs, self.job_id, self.stage = jobs, job_id, None

    def __call__(self, desc: str, n: float, total: float | None) -> None:
        fraction = n / total if total else 0.0
        if desc != self.stage:
            self.stage = desc
            log.info("stage: %s", desc or "(unnamed)")
        self.jobs.update_progress(self.job_id, desc, fraction)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    die_with_parent(args.parent_pid)

    from models import progress
    from models.errors import LesionsynthError
    from models.jobs import JOB_TYPES, JobContext
    from models.store import ModelStore
    from services.training.executor import WORK_NAME
    from services.training.jobstore import JobStore, one_line

    jobs = JobStore(args.db)
    job = jobs.get(args.job)
    if job is None or job.state != "running":
        log.error("job %s is not there or not running (%s); nothing to do", args.job, job and job.state)
        return EXIT_NOT_RUNNABLE
    log.info("running %s job %s (attempt %d, pid %d)", job.type, job.id, job.attempts, os.getpid())
    work_dir = args.jobs_dir / job.id / WORK_NAME
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(
        job_id=job.id, work_dir=work_dir, store=ModelStore(args.store), output_root=args.output_root
    )
    progress.set_sink(ProgressRecorder(jobs, job.id))
    try:
        result = JOB_TYPES[job.type].run(job.params, ctx)
    except LesionsynthError as exc:
        log.error("job failed: %s", exc)
        jobs.finish(job.id, "failed", error=one_line(str(exc)) or type(exc).__name__)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001  (a bug: the traceback to the log, a short reason to the record)
        traceback.print_exc()
        jobs.finish(job.id, "failed", error=f"internal error: {type(exc).__name__} (see the job log)")
        return EXIT_FAILED
    finally:
        progress.set_sink(None)
    jobs.finish(job.id, "succeeded", result=result)
    log.info("job succeeded: %s", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
