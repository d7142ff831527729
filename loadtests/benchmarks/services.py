"""Benchmark: the classifier and synthesis services against the same models in-process, in one run.

    python -m loadtests.benchmarks.services [--clients 16] [--duration 24] [--rounds 12] [--ort-threads 2]
        [--torch-threads 1] [--synth-requests 12] [--no-triton] [--variant-threads 0]

Classifier (issue 14: service >= 0.95x raw ONNX Runtime; issue 4 asked 0.9x): ``--clients`` threads, each sending
single-image requests in a loop; only requests that finish inside a measured window count. Every server
stays up for the whole run and the rows are interleaved: ``--rounds`` rounds, each measuring every row for
``--duration / --rounds`` seconds after a short warm-up, so load from other processes hits all rows alike.
Rows, all on one ONNX file (a random-init ResNet-50 at 224 px made into a real classifier and serving
folder under runs/bench-services/, reused on rerun):

* ``raw_ort``: ``session.run`` on preprocessed images in this process (ScreeningModel + OnnxRuntimeBackend);
* ``inproc_full``: the same plus PNG decode and preprocessing, still in-process (what the service adds
  before transport);
* ``rest_classify``, ``rest_classify_batch`` (one image per request; adaptive batching merges them),
  ``grpc_classify``: one ``bentoml serve`` of services.classifier.service, embedded ONNX Runtime;
* ``triton_rest_classify``: the service with TRITON_URL on a real Triton (PyTriton, CPU);
* ``variant_*`` (diagnostic, ``--variant-threads``): the same service with BentoML's ``threads`` set
  through LESIONSYNTH_CLASSIFIER_THREADS and LESIONSYNTH_ORT_THREADS=1; no service file is changed.

Images are PH2's 256 px PNGs (their file bytes are the request payloads) when ../shared/data/ph2 is
present, else demo data. CPU seconds of this process (the clients), of the server process trees, and of
everything else on the machine are recorded per window (other agents share these 2 cores); rows are also
reported as CPU efficiency and over "quiet" windows only.

Synthesis (issue 14: <= 1.05x; issue 4 asked 1.1x): seconds per request of ``LesionInpainter.inpaint`` in this process vs the
synthesis service over REST /synthesize and gRPC Synthesize, sequential single requests, same model,
images, masks and seeds, default sampler settings; the three are interleaved per request so background
load hits them alike. Model: runs/ph2/synth-uncond when present, else a small demo synthesizer.

Writes ``docs/benchmarks/services.json`` and ``docs/benchmarks/services.md`` (and keeps a copy of every
run's JSON in runs/bench-services/history/). The parts: services_classifier.py, services_synthesis.py,
services_common.py (measurement), services_report.py (the markdown); services start through
services/harness.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from loadtests.benchmarks.common import REPO, write_report
from loadtests.benchmarks.services_classifier import bench_classifier
from loadtests.benchmarks.services_common import WORK
from loadtests.benchmarks.services_report import markdown
from loadtests.benchmarks.services_synthesis import bench_synthesis


def environment(args) -> dict:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": {p: version(p) for p in ("onnxruntime", "bentoml", "torch", "grpcio", "httpx", "numpy")},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "thread_settings": {
            "bench_process_OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "ort_intra_op_threads": args.ort_threads,
            "torch_threads_synthesis": args.torch_threads,
        },
        "shared_machine": "other agents' processes may share these cores; see cpu_cores_used.other_processes",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=24.0, help="measured seconds per classifier row")
    parser.add_argument(
        "--rounds", type=int, default=12, help="interleaved rounds the duration is split into"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before a row's first round")
    parser.add_argument("--round-warmup", type=float, default=1.0, help="seconds before later rounds")
    parser.add_argument("--images", type=int, default=64, help="distinct classifier images, cycled")
    parser.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime intra-op threads, all rows")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads for synthesis, in-process and in the service (1: no OpenMP barrier stalls when "
        "other processes share the cores)",
    )
    parser.add_argument("--synth-requests", type=int, default=12)
    parser.add_argument(
        "--synthesizer", type=Path, help="synthesizer folder to time (default: PH2's or a demo)"
    )
    parser.add_argument("--synth-manifest", type=Path, help="with --synthesizer: its split manifest")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument(
        "--variant-threads",
        type=int,
        default=0,
        help="diagnostic rows: the service with BentoML threads=N and 1 ORT thread (0 = skip them; N=4 is "
        "now the shipped default, kept to compare other N)",
    )
    parser.add_argument("--skip", choices=["classifier", "synthesis"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    for name in ("synthesizer", "synth_manifest"):  # the report names them relative to the repo
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    WORK.mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m loadtests.benchmarks.services", *argv]).strip(),
        "environment": environment(args),
    }
    if "classifier" not in args.skip:
        result["classifier"] = bench_classifier(args, log)
        # Kept at once: a later failure must not lose minutes of measurement.
        from models.artifacts import atomic_write_json

        atomic_write_json(WORK / "history" / "services-partial.json", result)
    if "synthesis" not in args.skip:
        result["synthesis"] = bench_synthesis(args, log)
    result["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    write_report(args.out, "services", result, markdown(result))
    # Every run is also kept under runs/ (gitignored): on a shared machine, runs differ; keep the spread.
    from models.artifacts import atomic_write_json

    stamp = result["date"].replace(":", "").replace("+0000", "Z")
    atomic_write_json(WORK / "history" / f"services-{stamp}.json", result)
    return result


if __name__ == "__main__":
    main()
