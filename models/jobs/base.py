"""What every job type shares: the roots its paths must stay in, and the context it runs in.

A job is two plain functions, so the CLI, the training service's worker process and a Kubernetes Job pod
can all run one the same way:

- ``validate(params, roots) -> params``: checks a request before it is queued (types, ranges, unknown
  fields, every path inside the configured roots) and returns the normalised parameters that are stored
  with the job. Cheap: it imports no torch, so the service stays light.
- ``run(params, ctx) -> result``: does the work with the normalised parameters and returns a JSON-able
  result. It must be safe to call again after a crash: everything it writes goes under ``ctx.work_dir``
  (checkpoints) or ``ctx.output_root / ctx.job_id``, so a second call resumes instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.errors import ConfigError
from models.store import ModelStore


@dataclass(frozen=True)
class JobRoots:
    """Where jobs may read (``data_roots``, and the outputs of earlier jobs) and write (``output_root``)."""

    data_roots: tuple[Path, ...]
    output_root: Path

    def __post_init__(self) -> None:
        if not self.data_roots:
            raise ConfigError("at least one data root is needed: jobs may only read inside the data roots")
        # Resolved once (symlinks followed), so every containment check compares real paths.
        object.__setattr__(self, "data_roots", tuple(Path(r).resolve() for r in self.data_roots))
        object.__setattr__(self, "output_root", Path(self.output_root).resolve())

    @property
    def readable(self) -> tuple[Path, ...]:
        """Inputs may come from the data roots or from what earlier jobs wrote (e.g. a balanced manifest)."""
        return (*self.data_roots, self.output_root)


@dataclass(frozen=True)
class JobContext:
    job_id: str
    #: Persistent per job (survives service restarts): checkpoints live here, so a rerun resumes.
    work_dir: Path
    store: ModelStore
    output_root: Path

    @property
    def output_dir(self) -> Path:
        """Where a job's user-facing outputs go: ``output_root/<job_id>``."""
        return Path(self.output_root) / self.job_id


@dataclass(frozen=True)
class JobType:
    name: str
    validate: Callable[[dict, JobRoots], dict]
    run: Callable[[dict, JobContext], dict]
    #: Safe to run again after the service stopped mid-job (it resumes from what is on disk).
    resumable: bool
    summary: str
