"""Issue 14 (part 3): where the classifier service's CPU time goes under the services benchmark's load.

    python docs/archive/benchmarks/issue14-profile/profile_service.py [--seconds 20] [--rate 50]
        [--rows rest_classify,grpc_classify,rest_classify_batch] [--out DIR]

Starts the classifier service exactly as ``loadtests.benchmarks.services`` does (bench_service, the same
serving folder and env: 4 REST threads, 1 ORT thread, OMP_NUM_THREADS=1), drives it with the benchmark's
own clients and run_load (16 clients), and samples the whole service process tree with
``py-spy record --native --subprocesses --format raw`` (non-idle threads only: a sample is a thread on a
CPU or runnable) during each measured window. The collapsed stacks are then put into categories by the
first matching rule (``CATEGORIES``, innermost work first) and turned into CPU ms per image by scaling
each category's share of the samples with the server's measured CPU seconds per image (psutil).

Writes DIR/<row>.txt (the raw collapsed stacks), DIR/profile.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
sys.path.insert(0, str(REPO))

# Work that is ours wherever it is called from: the first rule with a frame matching anywhere in the stack.
WORK_CATEGORIES = [
    ("ORT session.run", ["onnxruntime::", "libonnxruntime", "Session.run (onnxruntime/"]),
    ("image decode (PNG inflate + unfilter, copies)", ["decode_image (models/data/images.py"]),
    ("preprocess (resize + normalise)", ["preprocess (models/classifier/screening.py"]),
    ("metrics (prometheus)", ["prometheus_client"]),
    ("logging", ["logging/__init__", "jsonlog.py"]),
]
# The rest by its innermost matching frame (who is doing the work, not who is on the stack above it).
FRAME_CATEGORIES = [
    ("multipart / form parsing", ["multipart", "formparsers"]),
    ("JSON / pydantic / base64", ["pydantic", "json", "base64", "binascii", "io_models"]),
    ("ours (services/common: ASGI middleware, error wrappers)", ["services/common/"]),
    ("gRPC transport (grpcio, protobuf)", ["grpc/", "cygrpc", "protobuf"]),
    (
        "BentoML dispatch (service, batching, traffic/metrics middleware)",
        ["_bentoml_impl", "bentoml/", "_bentoml_sdk", "opentelemetry", "asgi/__init__"],
    ),
    ("HTTP server (uvicorn, h11, starlette, anyio)", ["uvicorn", "h11", "httptools", "starlette", "anyio"]),
    ("asyncio event loop", ["asyncio", "selectors"]),
    ("threads: locks, queues, futures", ["threading.py", "queue.py", "concurrent/futures"]),
]
OTHER = "other (interpreter, allocator, kernel, unresolved)"
IDLE = "idle (waiting for work: event loop select, worker queues, grpc poll)"
#: The innermost frame of a thread that is waiting, not working (py-spy's own idle filter misses these).
IDLE_LEAVES = [
    "EpollSelector.select",
    "Condition.wait",
    "Queue.get",
    "_serve (grpc/_server.py",
    "Event.wait",
    "epoll_wait",
    "select (selectors.py",
    "_worker (concurrent/futures/thread.py",
    "SimpleQueue.get",
    "Thread.join",
    "_wait_for_tstate_lock",
]


def categorise(stack: str) -> str:
    leaf = stack.rsplit(";", 1)[-1]
    if any(n in leaf for n in IDLE_LEAVES):
        return IDLE
    for name, needles in WORK_CATEGORIES:
        if any(n in stack for n in needles):
            return name
    for frame in reversed(stack.split(";")):
        for name, needles in FRAME_CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return OTHER


def read_collapsed(path: Path) -> Counter:
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[stack] += int(n)
    return counts


def summarise(counts: Counter) -> dict:
    by_cat: Counter = Counter()
    for stack, n in counts.items():
        by_cat[categorise(stack)] += n
    idle = by_cat.pop(IDLE, 0)
    total = sum(by_cat.values())
    return {
        "samples": total,
        "idle_samples": idle,
        "fractions": {k: round(v / total, 4) for k, v in by_cat.most_common()},
    }


def perf_split(perf_data: Path) -> dict:
    """On-CPU samples by shared object (perf report --sort dso), percent."""
    text = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "--sort", "dso", "--stdio", "--no-children"],
        capture_output=True,
        text=True,
    ).stdout
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%") and not line.startswith("#"):
            out[" ".join(parts[1:])] = float(parts[0].rstrip("%"))
    return out


def session_options(threads: int) -> dict:
    """The ONNX Runtime session options OnnxRuntimeBackend builds (raw row: threads=2; service: 1)."""
    from loadtests.benchmarks.services_classifier import classifier_serving_folder
    from models.classifier.screening import OnnxRuntimeBackend

    serving, _ = classifier_serving_folder()
    o = OnnxRuntimeBackend(serving / "model.onnx", threads=threads).session.get_session_options()
    return {
        "graph_optimization_level": str(o.graph_optimization_level),
        "execution_mode": str(o.execution_mode),
        "enable_cpu_mem_arena": o.enable_cpu_mem_arena,
        "enable_mem_pattern": o.enable_mem_pattern,
        "intra_op_num_threads": o.intra_op_num_threads,
        "inter_op_num_threads": o.inter_op_num_threads,
    }


def stage_cpu_ms(payloads: list[bytes], repeats: int = 5) -> dict:
    """CPU ms (time.thread_time) per image of each stage, one caller, median over ``repeats`` passes."""
    import statistics

    from loadtests.benchmarks.services_classifier import classifier_serving_folder
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel, preprocess
    from models.data.images import decode_image

    serving, _ = classifier_serving_folder()
    model = ScreeningModel(serving, OnnxRuntimeBackend(serving / "model.onnx", threads=1))
    images = [decode_image(x) for x in payloads]
    inputs = [preprocess([im], model.size, model.mean, model.std) for im in images]

    def cpu(fn, items) -> float:
        runs = []
        for _ in range(repeats):
            t0 = time.thread_time()
            for item in items:
                fn(item)
            runs.append((time.thread_time() - t0) / len(items) * 1000)
        return round(statistics.median(runs), 3)

    return {
        "png_decode": cpu(decode_image, payloads),
        "preprocess": cpu(lambda im: preprocess([im], model.size, model.mean, model.std), images),
        "ort_batch1_1_thread": cpu(model.backend.infer, inputs[:16]),
    }


def main(argv: list[str] | None = None) -> dict:
    from loadtests.benchmarks.services_classifier import (
        CLASSIFIER_TARGET,
        classifier_payloads,
        classifier_serving_folder,
        grpc_classify_client,
        rest_batch_client,
        rest_classify_client,
    )
    from loadtests.benchmarks.services_common import WORK, bench_service, run_load

    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rows", default="rest_classify,grpc_classify")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    p.add_argument("--no-native", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "profile")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pyspy = Path(sys.executable).with_name("py-spy")

    serving, _ = classifier_serving_folder()
    payloads, _ = classifier_payloads(64)
    work = WORK / "service-classifier-profile"
    env = {
        "LESIONSYNTH_CLASSIFIER": str(serving),
        "OMP_NUM_THREADS": "1",
        "LESIONSYNTH_MODEL_STORE": str(work),
    }
    env.update(dict(kv.split("=", 1) for kv in args.env))
    result = {
        "command": " ".join(["python", str(Path(__file__).relative_to(REPO)), *(argv or sys.argv[1:])]),
        "service_env": {**env, "LESIONSYNTH_CLASSIFIER": str(serving.relative_to(REPO))},
        "rows": {},
    }
    result["session_options"] = {
        "raw_ort_row (threads=2)": session_options(2),
        "service (threads=1)": session_options(1),
    }
    result["stage_cpu_ms_one_caller"] = stage_cpu_ms(payloads)
    print(result["session_options"], result["stage_cpu_ms_one_caller"], flush=True)
    with bench_service(CLASSIFIER_TARGET, work, env) as svc:
        clients = {
            "rest_classify": rest_classify_client(svc.url, payloads),
            "grpc_classify": grpc_classify_client(svc.grpc_target, payloads),
            "rest_classify_batch": rest_batch_client(svc.url, payloads),
        }
        for row in args.rows.split(","):
            out: dict = {}
            load = threading.Thread(
                target=lambda out=out, make=clients[row]: out.update(
                    run_load(make, args.clients, args.warmup, args.seconds, server_pids=[svc.proc.pid])
                )
            )
            load.start()
            time.sleep(args.warmup + 0.3)
            raw = args.out / f"{row}.txt"
            cmd = [
                str(pyspy),
                "record",
                "--pid",
                str(svc.proc.pid),
                "--subprocesses",
                "--rate",
                str(args.rate),
                "--duration",
                str(int(args.seconds - 1)),
                "--format",
                "raw",
                "--output",
                str(raw),
            ]
            # --native cannot be combined with --nonblocking: py-spy pauses the process for each sample.
            cmd.append("--nonblocking" if args.no_native else "--native")
            import psutil

            pids = [svc.proc.pid, *(c.pid for c in psutil.Process(svc.proc.pid).children(recursive=True))]
            perf_data = args.out / f"{row}.perf.data"
            # perf's cpu-clock samples a thread only while it runs on a CPU: the CPU-accurate split by
            # library (py-spy also samples runnable threads waiting for a core, and Python frames only).
            perf = subprocess.Popen(
                [
                    "perf",
                    "record",
                    "-e",
                    "cpu-clock",
                    "-F",
                    "250",
                    "-p",
                    ",".join(map(str, pids)),
                    "-o",
                    str(perf_data),
                    "--",
                    "sleep",
                    str(int(args.seconds - 1)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            with open(args.out / f"{row}.py-spy.log", "w") as spylog:
                subprocess.run(cmd, check=True, stdout=spylog, stderr=subprocess.STDOUT)
            perf.wait()
            # Drop the process frames (command lines with this run's ports): the stacks are what is kept.
            lines = raw.read_text().splitlines()
            raw.write_text("".join(re.sub(r"^(process [^;]*;)+", "", line) + "\n" for line in lines))
            threads = len(list(Path(f"/proc/{svc.proc.pid}/task").iterdir()))
            import psutil

            workers = psutil.Process(svc.proc.pid).children(recursive=True)
            load.join()
            n = len(out["latencies"])
            cpu = out["cpu"]
            summary = summarise(read_collapsed(raw))
            server_ms = 1000 * cpu["server_processes"] / max(n, 1)
            summary.update(
                images=n,
                images_per_s=round(n / out["seconds"], 2),
                errors=out["errors"],
                server_cpu_ms_per_image=round(server_ms, 2),
                threads={"supervisor": threads, **{f"worker {w.pid}": w.num_threads() for w in workers}},
                other_processes_cores=round(cpu["other_processes"] / out["wall"], 2),
                ms_per_image={k: round(f * server_ms, 2) for k, f in summary["fractions"].items()},
            )
            summary["perf_by_library"] = perf_split(perf_data)
            perf_data.unlink()
            result["rows"][row] = summary
            print(
                f"\n{row}: {summary['images_per_s']} img/s, server CPU {server_ms:.2f} ms/image, "
                f"{summary['samples']} samples, other processes {summary['other_processes_cores']} cores"
            )
            for k, v in list(summary["perf_by_library"].items())[:12]:
                print(f"  perf {k:47s} {v:5.1f}%  {v * server_ms / 100:6.2f} ms")
            for k, f in summary["fractions"].items():
                print(f"  {k:52s} {100 * f:5.1f}%  {summary['ms_per_image'][k]:6.2f} ms")
    (args.out / "profile.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
