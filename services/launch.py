"""``make serve``: bootstrap demo models when the store has none, then run the three services locally.

    python -m services.launch [--no-bootstrap]

Each service is its own ``bentoml serve`` process (as in production: one container per service), on
127.0.0.1 with embedded defaults (ONNX Runtime, no auth). Ports come from the environment
(LESIONSYNTH_{SYNTHESIS,CLASSIFIER,TRAINING}_{REST,GRPC}_PORT) with the defaults of services/harness.py's
table. Ctrl-C stops all three; if one dies, the others are stopped and its log tail is printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from services.harness import REPO, SERVICES, ServiceProcess, stop_all


def port(name: str, kind: str, default: int) -> int:
    return int(os.environ.get(f"LESIONSYNTH_{name.upper()}_{kind}_PORT", default))


def service(name: str, runs: Path, rest: int | None = None, grpc_port: int | None = None) -> ServiceProcess:
    """Service ``name`` as ``make serve`` runs it: its store, jobs and data under ``runs`` (this process's
    environment wins), ports from LESIONSYNTH_<NAME>_{REST,GRPC}_PORT or the table's defaults."""
    spec = SERVICES[name]
    env = {
        # One home per service, as one container per service has: BentoML keeps its Prometheus
        # multiprocess files there, and services sharing them would export each other's samples.
        "BENTOML_HOME": str(runs / "bentoml" / name),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        "LESIONSYNTH_MODEL_STORE": str(runs / "model-store"),
        "LESIONSYNTH_JOBS_DIR": str(runs / "jobs"),
        # The training service's data roots and outputs (its defaults when runs is ./runs): relative job
        # paths resolve against the first root, so "serve-demo/data/manifest.csv" is the demo manifest.
        "LESIONSYNTH_DATA_ROOTS": os.pathsep.join([str(runs), str(REPO.parent / "shared" / "data")]),
        "LESIONSYNTH_OUTPUT_ROOT": str(runs / "outputs"),
        **os.environ,
    }
    return ServiceProcess(
        spec.target,
        runs,
        env,
        rest_port=rest if rest is not None else port(name, "REST", spec.rest_port),
        grpc_port=grpc_port if grpc_port is not None else port(name, "GRPC", spec.grpc_port),
        log_path=runs / "logs" / f"{name}.log",
    )


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

    procs = {name: service(name, runs) for name in SERVICES}
    # Both signals stop everything. Installed explicitly: a launcher started in the background by a
    # non-interactive shell inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for proc in procs.values():
            proc.spawn()
        pending = set(procs)
        deadline = time.monotonic() + 180
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if procs[name].poll_ready():
                    pending.discard(name)
            time.sleep(0.5)
        if pending:
            raise RuntimeError(
                f"not ready after 180 s: {', '.join(sorted(pending))} (logs in {runs / 'logs'})"
            )
        print("\nlesionsynth is serving (Ctrl-C to stop):")
        for name, proc in procs.items():
            print(f"  {name:10s} REST {proc.url}  (OpenAPI {proc.url}/docs)   gRPC {proc.grpc_target}")
        print(f"  logs in {runs / 'logs'}\n", flush=True)
        while True:
            for name, proc in procs.items():
                if proc.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(procs.values())


if __name__ == "__main__":
    sys.exit(main())
