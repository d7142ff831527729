"""Run a module data-parallel under ``torchrun``, from a job.

A job stays a plain function (models/jobs/base.py) whichever executor runs it: for ``processes > 1`` the
``train-synthesizer`` job calls :func:`run_data_parallel`, which starts ``torchrun --standalone
--nproc-per-node N -m models.jobs.synthesizer_ranks ...`` as a child and waits for it. The same code runs in a local job
process and in a Kubernetes Job pod that asked for N GPUs (services/training/k8s/).

- Progress: rank 0 writes its bar to a JSON file (``--progress-file``); the job process re-reports it on
  its own bar, which reaches the job record through the job's progress sink.
- Output: the ranks' output is copied line by line to this process's stderr (the job log); the last
  ``error:`` line (the module's one-line user error) becomes the job's error message.
- Stopping: torchrun is in this process's process group, so the executor's SIGTERM/SIGKILL of the group
  reaches it, and torchrun stops its ranks. On Linux it is also told to get SIGTERM if this process dies
  (``PR_SET_PDEATHSIG``), so a killed job leaves no ranks behind.
- Threads: each rank gets ``OMP_NUM_THREADS / N`` threads (at least 1), so N ranks on one CPU node do not
  oversubscribe it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from models.errors import LesionsynthError
from models.progress import read_progress_file, tqdm

POLL_SECONDS = 1.0


class DataParallelRunFailed(LesionsynthError):
    """torchrun ended with a non-zero status."""


def torchrun_command(nproc: int, args: list[str], module: str) -> list[str]:
    """``python -m torch.distributed.run ... -m <module> <args>``: ``nproc`` ranks on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one node: a local rendezvous on a free port
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",  # the job is resumed by the training service, from its checkpoints
        "-m",
        module,
        *args,
    ]


def torchrun_env(nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for :func:`torchrun_command`'s ranks (from ``base``, default os.environ)."""
    env = dict(os.environ if base is None else base)
    threads = int(env.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, threads // nproc))
    env["COLUMNS"] = "100000"  # the CLI's one-line error stays one line (rich wraps at 80 otherwise)
    # One node (--standalone): gloo's CPU collectives go over loopback. Left to itself gloo picks the
    # interface the hostname resolves to, and fails where it resolves to nothing (some containers).
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved here, in the parent: between fork and exec the child should do as little as possible.
_PRCTL = _load_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _PRCTL(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def run_data_parallel(nproc: int, args: list[str], progress_file: Path, module: str) -> None:
    """Run ``python -m <module> <args> --progress-file <progress_file>`` on ``nproc`` ranks (the module
    prints a user error as one ``error: ...`` line); raise :class:`DataParallelRunFailed` with the ranks'
    error when it fails."""
    progress_file = Path(progress_file)
    progress_file.unlink(missing_ok=True)
    env = torchrun_env(nproc)
    command = torchrun_command(nproc, [*args, "--progress-file", str(progress_file)], module)
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent if _PRCTL is not None else None,  # noqa: PLW1509
    )
    errors: list[str] = []
    copier = threading.Thread(target=_copy_output, args=(proc.stdout, errors), daemon=True)
    copier.start()
    relay = ProgressRelay(progress_file)
    try:
        while proc.poll() is None:
            time.sleep(POLL_SECONDS)
            relay.poll()
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise
    finally:
        copier.join(10)
    relay.poll()
    relay.close()
    if proc.returncode != 0:
        reason = (
            errors[-1] if errors else f"see the job log for the ranks' output (exit status {proc.returncode})"
        )
        raise DataParallelRunFailed(f"data-parallel run on {nproc} processes failed: {reason}")


class ProgressRelay:
    """Re-reports rank 0's bars (from its JSON progress file) on bars of this process, one per stage."""

    def __init__(self, path: Path):
        self.path, self.stage, self.bar = path, None, None

    def poll(self) -> None:
        seen = read_progress_file(self.path)
        if seen is None:
            return
        stage, n, total = seen
        if stage != self.stage or self.bar is None:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, disable=True)  # only the sink sees it
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _copy_output(stream, errors: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        sys.stderr.write(line)
        text = line.strip()
        # torchrun prefixes nothing by default; the CLI's user error is "error: <message>".
        if text.startswith("error:"):
            errors.append(text.removeprefix("error:").strip())
    stream.close()
