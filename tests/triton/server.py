"""Start a real Triton server (PyTriton, tests/triton/serve_onnx.py) for tests that run in the main venv.

PyTriton needs numpy<2, so the server runs from its own venv (``make triton-env`` -> ``.venv-triton``)
as a subprocess in its own process group; this module imports neither pytriton nor numpy<2. Usage::

    with start_triton(repository, "lesion_classifier") as triton:
        backend = TritonBackend(triton.grpc_url)
        triton.stop()   # server gone, ports free
        triton.start()  # same ports again (recovery tests)

Tests skip (with the command to run) when ``.venv-triton`` is missing.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.triton_server import READY_TIMEOUT_S, SERVE, TRITON_VENV, TritonProcess

__all__ = ["READY_TIMEOUT_S", "SERVE", "TRITON_VENV", "TritonProcess", "start_triton", "triton_python"]


def triton_python() -> Path:
    """The .venv-triton interpreter; ``pytest.skip`` when it is not installed."""
    python = TRITON_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no Triton test environment at {TRITON_VENV}: run `make triton-env` first")
    return python


@contextlib.contextmanager
def start_triton(repository: Path, model: str) -> Iterator[TritonProcess]:
    """Serve ``<repository>/<model>/1/model.onnx`` from a real Triton; always kill it at the end."""
    python = triton_python()
    with tempfile.TemporaryDirectory(prefix="lesionsynth-triton-") as log_dir:
        triton = TritonProcess(repository, model, python, Path(log_dir))
        try:
            triton.start()
            yield triton
        finally:
            triton.stop()
