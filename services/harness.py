"""One server harness: the services' table, free ports, and a ``bentoml serve`` process to start and stop.

Used by ``make serve`` (services/launch.py), the tests (tests/service_process.py), the benchmarks
(loadtests/benchmarks/) and the image rehearsals (deploy/docker/rehearse.py). ``SERVICES`` is the one
place the service names, BentoML targets and default ports are written in Python; the deploy files that
cannot import it (Dockerfiles, Kubernetes manifests, Prometheus' local config, docs/deploy_conventions.md)
are checked against it by tests/test_deploy_images.py and tests/test_deploy_manifests.py.

A service runs as its own process group (BentoML's supervisor; its workers are not in that group, so a
stop signals the whole process tree): SIGTERM first (a clean shutdown: gRPC stopped, jobs stopped), then
SIGKILL whatever is left. Standard library only at import time: the services' settings read their
default gRPC ports from here.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    target: str  # what `bentoml serve` takes
    rest_port: int  # the default REST port (`make serve`, the images, the manifests)
    grpc_port: int  # the default LESIONSYNTH_GRPC_PORT
    grpc_service: str  # the gRPC service (and its health-check name)


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec(
            "synthesis",
            "services.synthesis.service:SynthesisService",
            3000,
            50051,
            "lesionsynth.v1.Synthesis",
        ),
        ServiceSpec(
            "classifier",
            "services.classifier.service:ClassifierService",
            3001,
            50052,
            "lesionsynth.v1.Classifier",
        ),
        ServiceSpec(
            "training", "services.training.service:TrainingService", 3002, 50053, "lesionsynth.v1.Training"
        ),
    )
}
TARGETS = {name: spec.target for name, spec in SERVICES.items()}


def default_endpoints(host: str = "127.0.0.1") -> dict[str, tuple[str, str]]:
    """name -> (REST base URL, gRPC target) on the default ports (`make serve`'s)."""
    return {
        name: (f"http://{host}:{spec.rest_port}", f"{host}:{spec.grpc_port}")
        for name, spec in SERVICES.items()
    }


# -- free ports -------------------------------------------------------------------------------------
# Why not ``bind(("127.0.0.1", 0))``: the kernel hands out port 0 from its *ephemeral* range
# (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same range every outgoing
# connection and every other bind-to-0 draws from. Between asking for a port and the server binding it
# (seconds, for a BentoML service that starts after two others), another process can get the same number:
# CI failed once with ``Failed to bind to address 127.0.0.1:34297 ... Address already in use`` on a gRPC
# port. Ports here come from below the ephemeral range, where nothing is assigned behind our back, and are
# reserved across processes (pytest-xdist workers, a benchmark beside the tests) with an ``O_EXCL`` file
# named after the port (reclaimed when the owning process is gone).

PORT_RANGE = (20000, 32000)  # below Linux's default ephemeral range (32768-60999)
RESERVATIONS = Path(tempfile.gettempdir()) / "lesionsynth-test-ports"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserve(port: int) -> bool:
    """Claim ``port`` for this process; False when a live process holds it."""
    RESERVATIONS.mkdir(parents=True, exist_ok=True)
    path = RESERVATIONS / str(port)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(path.read_text() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner == os.getpid():
                return False  # ours already: handed out earlier in this process
            if owner and _alive(owner):
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its owner has exited
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports, bindable now, reserved for this process, outside the ephemeral range."""
    low, high = PORT_RANGE
    high = min(high, _ephemeral_low())
    ports: list[int] = []
    rng = random.Random()
    for _ in range(50 * count):
        if len(ports) == count:
            return ports
        port = rng.randrange(low, high)
        if port not in ports and _bindable(port) and _reserve(port):
            ports.append(port)
    if len(ports) == count:
        return ports
    raise RuntimeError(f"found only {len(ports)} of {count} free ports in {low}-{high}")


def free_port() -> int:
    return free_ports(1)[0]


# -- a service process ------------------------------------------------------------------------------
def service_env(bentoml_home: Path, overrides: Mapping[str, str] = (), base: Mapping | None = None) -> dict:
    """``base`` (this process's environment) < BentoML's home, no tracking, offline HF < ``overrides``."""
    return {
        **(os.environ if base is None else base),
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        **dict(overrides),
    }


def _lost_port_race(log: bytes) -> bool:
    """gRPC says "Failed to bind to address"; uvicorn says "[Errno 98] ... address already in use"."""
    return "address already in use" in log.decode(errors="replace").lower()


class ServiceProcess:
    """``bentoml serve <target>`` on 127.0.0.1 with ``env`` (the whole environment, see ``service_env``)
    and LESIONSYNTH_GRPC_PORT set; output appended to ``log_path``.

    Ports left unset are free ones (``free_ports``); a first start that loses a port race (another process
    bound one of them first) is retried on new ports; a restart keeps its ports, as a pod would. ``command``
    replaces ``bentoml serve ...`` (an image's CMD, already pointing at ``rest_port``)."""

    def __init__(
        self,
        target: str,
        workdir: Path,
        env: Mapping[str, str],
        *,
        rest_port: int | None = None,
        grpc_port: int | None = None,
        log_path: Path | None = None,
        cwd: Path = REPO,
        command: list[str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.target, self.workdir, self.cwd, self.command, self.host = target, workdir, cwd, command, host
        self.env = dict(env)
        self.fixed_ports = rest_port is not None or grpc_port is not None
        self.rest_port, self.grpc_port = rest_port, grpc_port
        if rest_port is None or grpc_port is None:
            new = iter(free_ports(2))
            self.rest_port = rest_port if rest_port is not None else next(new)
            self.grpc_port = grpc_port if grpc_port is not None else next(new)
        self.log_path = log_path or workdir / f"{target.split(':')[-1]}.log"
        self.started_once = False
        self.proc: subprocess.Popen | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def spawn(self) -> ServiceProcess:
        """Start the process group; return at once (``poll_ready`` / ``wait_ready`` say when it answers)."""
        self.env["LESIONSYNTH_GRPC_PORT"] = str(self.grpc_port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = self.command or [
            str(BENTOML), "serve", self.target, "--host", self.host, "--port", str(self.rest_port),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def poll_ready(self) -> bool:
        """True once /readyz answers 200; RuntimeError when the process exited or lost a port race."""
        import httpx

        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.target} exited with {code}:\n{self.log()}")
        try:
            if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                self.started_once = True
                return True
        except httpx.HTTPError:
            pass
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(self._log_start)
            if _lost_port_race(f.read()):
                self.stop()
                raise RuntimeError(f"{self.target} lost a port race:\n{self.log()}")
        return False

    def wait_ready(self, timeout: float) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.target} not ready after {timeout:.0f} s:\n{self.log()}")

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        """Spawn and wait for /readyz (a lost port race on free ports: new ports, up to 3 tries)."""
        for attempt in range(3):
            try:
                return self.spawn().wait_ready(timeout)
            except RuntimeError as exc:
                lost_race = "lost a port race" in str(exc)
                if self.started_once or self.fixed_ports or not lost_race or attempt == 2:
                    raise
                self.rest_port, self.grpc_port = free_ports(2)
        raise AssertionError("unreachable")

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log(10**7).splitlines()[-lines:])

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

    def stop(self, grace_s: float = 20.0) -> None:
        stop_all([self], grace_s)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all(services: Iterable[ServiceProcess], grace_s: float = 20.0) -> None:
    """SIGTERM every service's process group at once, then SIGKILL whatever is left of their process trees
    after ``grace_s`` (BentoML's workers are not in the supervisor's process group)."""
    import psutil

    running = [s for s in services if s.proc is not None and s.proc.poll() is None]
    tree: list[psutil.Process] = []
    for service in running:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(service.proc.pid)
            tree += [root, *root.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    for service in running:
        service.proc.wait(10)
