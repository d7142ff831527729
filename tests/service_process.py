"""Run a lesionsynth service as a real ``bentoml serve`` subprocess on free ports, for tests.

Each service gets its own BENTOML_HOME and log file; the whole process group (BentoML's supervisor and
its workers) is stopped at the end, or killed with ``kill(signal.SIGKILL)`` for crash tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from ports import free_port, free_ports

__all__ = ["REPO", "TARGETS", "ServiceProcess", "free_port", "model_env"]

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "synthesis": "services.synthesis.service:SynthesisService",
    "classifier": "services.classifier.service:ClassifierService",
    "training": "services.training.service:TrainingService",
}


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


BENTOML = Path(sys.executable).with_name("bentoml")


def _lost_port_race(log: bytes) -> bool:
    """gRPC says "Failed to bind to address"; uvicorn says "[Errno 98] ... address already in use"."""
    text = log.decode(errors="replace").lower()
    return "address already in use" in text


class ServiceProcess:
    def __init__(self, target: str, workdir: Path, env: dict[str, str]):
        self.target = target
        self.workdir = workdir
        self.rest_port, self.grpc_port = free_ports(2)
        self.started_once = False
        self.env = {
            **os.environ,
            "BENTOML_HOME": str(workdir / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **env,
        }
        self.log_path = workdir / f"{target.split(':')[-1]}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        """Start and wait for /readyz. A first start that loses a port race (another process bound
        one of its ports first) is retried on new ports; a restart keeps its ports, as a pod would."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                lost_race = "lost a port race" in str(exc)
                if self.started_once or not lost_race or attempt == 2:
                    raise
                self.rest_port, self.grpc_port = free_ports(2)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> ServiceProcess:
        self.env["LESIONSYNTH_GRPC_PORT"] = str(self.grpc_port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BENTOML), "serve", self.target, "--host", "127.0.0.1", "--port", str(self.rest_port)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.started_once = True
                    return self
            except httpx.HTTPError:
                pass
            if _lost_port_race(self.log_path.read_bytes()[log_start:]):
                self.stop()
                raise RuntimeError(f"{self.target} lost a port race:\n{self.log()}")
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.target} not ready after {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process tree at once, as a container runtime would: BentoML's workers are
        not in the supervisor's process group, so ``killpg`` alone would leave them running."""
        import psutil

        if not self.proc or self.proc.poll() is not None:
            return
        root = psutil.Process(self.proc.pid)
        tree = [root, *root.children(recursive=True)]
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        psutil.wait_procs(tree, timeout=30)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: gRPC stopped, jobs stopped), then SIGKILL whatever is left."""
        import psutil

        if not self.proc or self.proc.poll() is not None:
            return
        tree = [psutil.Process(self.proc.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += tree[0].children(recursive=True)
        os.killpg(self.proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.proc.wait(10)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
