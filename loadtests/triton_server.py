"""A real Triton server (PyTriton, tests/triton/serve_onnx.py) as a subprocess, for the tests and the benchmarks.

PyTriton needs numpy<2, so the server runs from its own venv (``make triton-env`` -> ``.venv-triton``,
pinned in tests/triton/requirements.txt) as a subprocess in its own process group; this module imports
neither pytriton nor numpy<2. Its ports come from services/harness.py's ``free_ports``. The tests' entry
point (with a skip when the venv is missing) is tests/triton/server.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.harness import REPO, free_ports  # outside the ephemeral range

TRITON_VENV = Path(os.environ.get("LESIONSYNTH_TRITON_VENV", REPO / ".venv-triton"))
SERVE = REPO / "tests" / "triton" / "serve_onnx.py"  # a script run by .venv-triton's python, not imported
READY_TIMEOUT_S = 60.0


class TritonProcess:
    """One serve_onnx.py subprocess on fixed ports; ``stop()``/``start()`` may be repeated."""

    def __init__(self, repository: Path, model: str, python: Path, log_dir: Path):
        self.repository, self.model, self.python = Path(repository), model, python
        self.grpc_port, self.http_port, self.metrics_port = free_ports(3)
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.log_path = log_dir / "triton.log"
        self.proc: subprocess.Popen | None = None
        libdir = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # The python-backend stub must load .venv-triton's libpython, not the system's (see STACK.md).
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])),
        }
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTRITON_HOME"] = str(log_dir / "pytriton-home")  # never ~/.cache/pytriton
        self.env = env

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = [str(self.python), str(SERVE), "--repository", str(self.repository), "--model", self.model]
        cmd += ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
        cmd += ["--metrics-port", str(self.metrics_port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + READY_TIMEOUT_S
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Triton exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(Exception):
                    if client.is_server_ready(client_timeout=2) and client.is_model_ready(
                        self.model, client_timeout=2
                    ):
                        return
                time.sleep(0.25)
        raise TimeoutError(f"Triton not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group (clean shutdown), SIGKILL whatever is left after ``timeout_s``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"Triton did not stop in {timeout_s:.0f} s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the tritonserver child too, whatever happened
        proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
