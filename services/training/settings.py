"""Training-job service settings (environment variables; table in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.errors import ConfigError
from services.common.settings import CommonSettings, env_int, env_str


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
    #: "local" (a process per job); the Kubernetes executor comes with the deployment issue.
    executor: str

    @classmethod
    def from_env(cls) -> TrainingSettings:
        roots = env_str("DATA_ROOTS", os.pathsep.join(["runs", "../shared/data"]))
        executor = env_str("EXECUTOR", "local")
        if executor != "local":
            raise ConfigError(f"LESIONSYNTH_EXECUTOR must be 'local', got {executor!r}")
        return cls(
            common=CommonSettings.from_env(default_grpc_port=50053),
            jobs_dir=Path(env_str("JOBS_DIR", "runs/jobs")).resolve(),
            data_roots=tuple(Path(p).resolve() for p in roots.split(os.pathsep) if p),
            output_root=Path(env_str("OUTPUT_ROOT", "runs/outputs")).resolve(),
            model_store=Path(env_str("MODEL_STORE", "runs/model-store")).resolve(),
            max_concurrent_jobs=env_int("MAX_CONCURRENT_JOBS", 1, minimum=1, maximum=64),
            executor=executor,
        )
