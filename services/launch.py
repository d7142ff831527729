"""``make serve``: bootstrap demo models when the store has none, then run the three services locally.

    python -m services.launch [--no-bootstrap]

Each service is its own ``bentoml serve`` process (as in production: one container per service), on
127.0.0.1 with embedded defaults (ONNX Runtime, no auth). Ports come from the environment
(LESIONSYNTH_{SYNTHESIS,CLASSIFIER,TRAINING}_{REST,GRPC}_PORT) with the defaults below. Ctrl-C stops
all three; if one dies, the others are stopped and its log tail is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVICES = {
    # name: (bentoml target, REST port, gRPC port)
    "synthesis": ("services.synthesis.service:SynthesisService", 3000, 50051),
    "classifier": ("services.classifier.service:ClassifierService", 3001, 50052),
    "training": ("services.training.service:TrainingService", 3002, 50053),
}


def port(name: str, kind: str, default: int) -> int:
    return int(os.environ.get(f"LESIONSYNTH_{name.upper()}_{kind}_PORT", default))


def start(name: str, target: str, rest: int, grpc_port: int, runs: Path) -> subprocess.Popen:
    env = {
        "BENTOML_HOME": str(runs / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        "LESIONSYNTH_MODEL_STORE": str(runs / "model-store"),
        "LESIONSYNTH_JOBS_DIR": str(runs / "jobs"),
        **os.environ,
        "LESIONSYNTH_GRPC_PORT": str(grpc_port),
    }
    log = (runs / "logs").joinpath(f"{name}.log").open("ab")
    bentoml = Path(sys.executable).with_name("bentoml")
    return subprocess.Popen(
        [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(rest)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(procs: dict[str, subprocess.Popen], grace_s: float = 20.0) -> None:
    """SIGTERM every service at once, then SIGKILL whatever is left of their process trees after
    ``grace_s`` (BentoML's workers are not in the supervisor's process group)."""
    import psutil

    tree: list[psutil.Process] = []
    for proc in procs.values():
        if proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(proc.pid)
                tree += [root, *root.children(recursive=True)]
            os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    for proc in procs.values():
        proc.wait(10)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-bootstrap", action="store_true", help="do not train demo models when missing")
    parser.add_argument(
        "--runs", type=Path, default=REPO / "runs", help="where the store, jobs and logs live"
    )
    args = parser.parse_args(argv)
    runs = args.runs.resolve()
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    if not args.no_bootstrap:
        import logging

        from models.demo_models import ensure_demo_models

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        versions = ensure_demo_models(runs / "model-store", runs / "serve-demo")
        print("models in the store:", ", ".join(f"{k} {v}" for k, v in versions.items()))

    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, tuple[str, str]] = {}
    for name, (target, rest_default, grpc_default) in SERVICES.items():
        rest, grpc_port = port(name, "REST", rest_default), port(name, "GRPC", grpc_default)
        procs[name] = start(name, target, rest, grpc_port, runs)
        urls[name] = (f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}")
    # Both signals stop everything. Installed explicitly: a launcher started in the background by a
    # non-interactive shell inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        pending = set(procs)
        deadline = time.monotonic() + 180
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{tail(runs / 'logs' / f'{name}.log')}")
                try:
                    if httpx.get(urls[name][0] + "/readyz", timeout=2).status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        if pending:
            raise RuntimeError(
                f"not ready after 180 s: {', '.join(sorted(pending))} (logs in {runs / 'logs'})"
            )
        print("\nlesionsynth is serving (Ctrl-C to stop):")
        for name, (rest, grpc_target) in urls.items():
            print(f"  {name:10s} REST {rest}  (OpenAPI {rest}/docs)   gRPC {grpc_target}")
        print(f"  logs in {runs / 'logs'}\n", flush=True)
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{tail(runs / 'logs' / f'{name}.log')}")
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
