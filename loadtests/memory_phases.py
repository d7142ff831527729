"""Classifier worker memory across load phases: does a burst of concurrency (with the CPU contended) leave
the worker bigger, and does a second burst add more? The question the 30-minute soak left open
(docs/soak-30min.md: +35.8% in two steps while other work loaded the machine).

    python -m loadtests.memory_phases                        # ~7 min -> docs/memory-phases.{json,md}
    python -m loadtests.memory_phases --seconds 5 --out /tmp/mp   # a quick look

Starts its own classifier service (``bentoml serve``, the shipped defaults) on spare ports with the demo
models of ``make serve`` (bootstrapped when missing), then runs each phase for ``--seconds`` against it and
samples the worker process at the end of the phase: resident memory, anonymous memory, threads. Phases:
4 REST clients (the soak's load), then 16 REST, 16 gRPC and 16 ``/classify_batch`` clients each with two
CPU-burning processes beside them, twice over, with the soak's load between. Images: PH2 256 px PNGs when
../shared is there, else the demo data.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import psutil

from loadtests.run_load import ready
from models.artifacts import atomic_write_json, atomic_write_text
from services.grpc_stubs import classifier_pb2, classifier_pb2_grpc
from services.launch import service

REPO = Path(__file__).resolve().parents[1]
PH2_IMAGES = REPO.parent / "shared" / "data" / "ph2" / "256" / "ph2" / "images"
HOG = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def load_images(runs: Path, count: int = 32) -> tuple[list[bytes], str]:
    files = sorted(PH2_IMAGES.glob("*.png"))[:count] if PH2_IMAGES.is_dir() else []
    if files:
        return [f.read_bytes() for f in files], "PH2 (Mendonca et al., EMBC 2013), 256 px PNG"
    files = sorted((runs / "serve-demo").rglob("*.png"))[:count]
    if not files:
        raise SystemExit("no images: neither ../shared/data/ph2 nor the demo data of `make serve` is there")
    return [f.read_bytes() for f in files], "demo data of `make serve`"


def worker(supervisor: subprocess.Popen) -> psutil.Process:
    """BentoML's worker: the descendant of the supervisor with the most resident memory."""
    children = psutil.Process(supervisor.pid).children(recursive=True)
    return max(children, key=lambda p: p.memory_info().rss)


def sample(proc: psutil.Process) -> dict:
    full = proc.memory_full_info()
    return {
        "rss_mb": round(full.rss / 2**20, 1),
        "anon_mb": round((full.rss - full.shared) / 2**20, 1),
        "threads": proc.num_threads(),
    }


def run_clients(call: Callable[[int], None], clients: int, seconds: float) -> tuple[int, int]:
    """``clients`` threads calling back to back for ``seconds``; (requests, errors)."""
    end = time.monotonic() + seconds

    def loop(k: int) -> tuple[int, int]:
        done = errors = 0
        while time.monotonic() < end:
            try:
                call(k + done * clients)
            except Exception:  # noqa: BLE001  (counted: the report says how many failed)
                errors += 1
            done += 1
        return done, errors

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(loop, range(clients)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rest-port", type=int, default=3901)
    parser.add_argument("--grpc-port", type=int, default=50952)
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "memory-phases")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set in the service's environment"
    )
    args = parser.parse_args(argv)
    service_env = dict(item.split("=", 1) for item in args.env)
    os.environ.update(service_env)  # services.launch.service passes our environment on
    runs = args.runs.resolve()
    (runs / "logs").mkdir(parents=True, exist_ok=True)

    from models.demo_models import ensure_demo_models

    versions = ensure_demo_models(runs / "model-store", runs / "serve-demo")
    images, data = load_images(runs)
    n = len(images)
    rest = f"http://127.0.0.1:{args.rest_port}"
    for port in (args.rest_port, args.grpc_port):  # else /readyz could answer from someone else's service
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is in use: pass --rest-port / --grpc-port")
    svc = service("classifier", runs, args.rest_port, args.grpc_port).spawn()
    proc = svc.proc
    try:
        deadline = time.monotonic() + 180
        while True:
            if ready(rest):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the classifier service did not come up; see {runs / 'logs' / 'classifier.log'}"
                )
            time.sleep(0.5)
        http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32))
        stub = classifier_pb2_grpc.ClassifierStub(grpc.insecure_channel(f"127.0.0.1:{args.grpc_port}"))

        def rest_call(i: int) -> None:
            files = {"image": ("i.png", images[i % n], "image/png")}
            http.post(rest + "/classify", files=files).raise_for_status()

        def batch_call(i: int) -> None:
            body = {"items": [{"image": base64.b64encode(images[i % n]).decode()}]}
            http.post(rest + "/classify_batch", json=body).raise_for_status()

        def grpc_call(i: int) -> None:
            stub.Classify(classifier_pb2.ClassifyRequest(image=images[i % n]), timeout=60)

        calls = {"REST /classify": rest_call, "REST /classify_batch": batch_call, "gRPC Classify": grpc_call}
        steady = ("REST /classify", 4, 0)
        bursts = [("REST /classify", 16, 2), ("gRPC Classify", 16, 2), ("REST /classify_batch", 16, 2)]
        plan = [steady, *[p for b in bursts for p in (b, steady)], *[p for b in bursts for p in (b, steady)]]
        w = worker(proc)
        idle = sample(w)
        rows = [
            {
                "phase": "idle after start-up",
                **idle,
                "peak_rss_mb": idle["rss_mb"],
                "requests": 0,
                "errors": 0,
            }
        ]
        print(f"{rows[0]['phase']:45s} {rows[0]}", flush=True)
        for kind, clients, hogs in plan:
            hog_procs = [
                subprocess.Popen([sys.executable, "-c", HOG.format(s=args.seconds)]) for _ in range(hogs)
            ]
            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(run_clients, calls[kind], clients, args.seconds)
                peak = 0.0
                while not load.done():
                    peak = max(peak, w.memory_info().rss / 2**20)
                    time.sleep(0.5)
                requests, errors = load.result()
            for h in hog_procs:
                h.wait()
            name = f"{kind}, {clients} clients" + (f" + {hogs} CPU hogs" if hogs else "")
            end = sample(w)
            rows.append(
                {
                    "phase": name,
                    **end,
                    "peak_rss_mb": round(max(peak, end["rss_mb"]), 1),
                    "requests": requests,
                    "errors": errors,
                }
            )
            print(f"{name:45s} {rows[-1]}", flush=True)
    finally:
        svc.stop()

    first_steady = rows[1]["rss_mb"]
    summary = {
        "command": "python -m loadtests.memory_phases "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{psutil.cpu_count()} CPUs ({platform.machine()})",
        "model": f"classifier-onnx {versions.get('classifier-onnx', '?')} (the demo model of `make serve`)",
        "data": data,
        "seconds_per_phase": args.seconds,
        "service_env": service_env,
        "phases": rows,
        "growth_after_first_steady_phase_mb": round(max(r["rss_mb"] for r in rows[1:]) - first_steady, 1),
        "growth_over_the_second_round_of_bursts_mb": round(
            rows[-1]["rss_mb"] - rows[1 + 2 * len(bursts)]["rss_mb"], 1
        ),
    }
    md = [
        "# Classifier worker memory across load phases",
        "",
        f"Command: `{summary['command'].strip()}` ({summary['date']}); {summary['machine']}; model "
        f"{summary['model']}; data {data}; {args.seconds:g} s per phase; extra service environment "
        f"{service_env or 'none'}. The worker is sampled at the end of "
        "each phase (RSS, RSS minus file-backed shared pages, threads). Service: shipped defaults (4 REST "
        "threads, 1 ORT thread each, 8 gRPC workers).",
        "",
        "| phase | RSS MB at the end | peak RSS MB (0.5 s samples) | anon MB | threads | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['phase']} | {r['rss_mb']} | {r['peak_rss_mb']} | {r['anon_mb']} | {r['threads']} | "
            f"{r['requests']} | {r['errors']} |"
            for r in rows
        ],
        "",
        f"Largest RSS above the first steady phase: **{summary['growth_after_first_steady_phase_mb']} MB**; "
        f"change over the second round of bursts: **{summary['growth_over_the_second_round_of_bursts_mb']} MB**.",
    ]
    atomic_write_json(args.out.with_suffix(".json"), summary)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(md) + "\n")
    print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
