"""Run a lesionsynth service as a real ``bentoml serve`` subprocess on free ports, for tests.

The harness is services/harness.py (shared with ``make serve``, the benchmarks and the image rehearsals);
this adds the tests' defaults: each service gets its own BENTOML_HOME under its work folder, one OpenMP
thread, and ``model_env`` points it at the test models. ``kill(signal.SIGKILL)`` for crash tests.
"""

from __future__ import annotations

from pathlib import Path

from services import harness
from services.harness import REPO, TARGETS, free_port

__all__ = ["REPO", "TARGETS", "ServiceProcess", "free_port", "model_env"]


def model_env(name: str, tmp: Path, synthesizer: Path, serving_classifier: Path) -> dict[str, str]:
    """The environment that points service ``name`` at test models (or, for training, test folders)."""
    env = {"LESIONSYNTH_MODEL_STORE": str(tmp / "store")}
    if name == "synthesis":
        env["LESIONSYNTH_SYNTHESIZER"] = str(synthesizer)
    elif name == "classifier":
        env["LESIONSYNTH_CLASSIFIER"] = str(serving_classifier)
    else:
        env.update(
            LESIONSYNTH_DATA_ROOTS=str(tmp / "data"),
            LESIONSYNTH_OUTPUT_ROOT=str(tmp / "out"),
            LESIONSYNTH_JOBS_DIR=str(tmp / "jobs"),
        )
    return env


class ServiceProcess(harness.ServiceProcess):
    """``harness.ServiceProcess`` on free ports, with the test environment (``env`` on top of ours)."""

    def __init__(self, target: str, workdir: Path, env: dict[str, str]):
        super().__init__(
            target, workdir, harness.service_env(workdir / "bentoml", {"OMP_NUM_THREADS": "1", **env})
        )
