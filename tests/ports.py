"""Free TCP ports for test servers that no other process will take before the server binds them.

Why not ``bind(("127.0.0.1", 0))``: the kernel hands out port 0 from its *ephemeral* range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same range every outgoing
connection and every other bind-to-0 draws from. Between asking for a port and the server binding it
(seconds, for a BentoML service that starts after two others), another process can get the same number:
CI failed once with ``Failed to bind to address 127.0.0.1:34297 ... Address already in use`` on a gRPC
port. Ports here come from below the ephemeral range, where nothing is assigned behind our back, and are
reserved across pytest-xdist workers with an ``O_EXCL`` file named after the port (reclaimed when the
owning process is gone).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
from pathlib import Path

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
