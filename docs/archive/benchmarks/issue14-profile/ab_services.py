"""Issue 14 (part 3): the classifier service before and after this part's changes, side by side in one run.

    python docs/archive/benchmarks/issue14-profile/ab_services.py [--rounds 8] [--seconds 3] [--paths P ...]

Two snapshots of the working tree are taken at the same moment (tracked + untracked, not ignored files):
``after`` as it is, ``before`` with ``--paths`` (this part's files) restored from ``--base`` (default
HEAD). Each snapshot serves the classifier exactly as the services benchmark does (bench_service, the same
serving folder and env), both up for the whole run; the rows -- raw ONNX Runtime in this process (the
benchmark's raw_ort) and REST /classify and gRPC Classify on each snapshot -- are interleaved round by
round with the benchmark's run_load (16 clients), so other load on the machine hits every row alike.
Writes DIR/ab.json and prints the ratios vs raw ORT and after/before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
sys.path.insert(0, str(REPO))

PATHS = ["models/data/images.py", "services/common/grpc_server.py"]


def snapshot(dest: Path, base: str | None, paths: list[str]) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    if base:
        for p in paths:
            blob = subprocess.run(["git", "show", f"{base}:{p}"], cwd=REPO, capture_output=True, check=True)
            (dest / p).write_bytes(blob.stdout)
    return dest


def main(argv: list[str] | None = None) -> dict:
    from loadtests.benchmarks.services_classifier import (
        CLASSIFIER_TARGET,
        classifier_payloads,
        classifier_serving_folder,
        grpc_classify_client,
        in_process_client,
        rest_classify_client,
    )
    from loadtests.benchmarks.services_common import WORK, bench_service, run_load, summarize
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel, preprocess
    from models.data.images import decode_image
    from services.harness import ServiceProcess, service_env

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row and round")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--base", default="HEAD")
    p.add_argument("--paths", nargs="*", default=PATHS)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)

    serving, _ = classifier_serving_folder()
    payloads, _ = classifier_payloads(64)
    model = ScreeningModel(serving, OnnxRuntimeBackend(serving / "model.onnx", threads=2))
    inputs = [preprocess([decode_image(x)], model.size, model.mean, model.std) for x in payloads]
    trees = {
        "before": snapshot(Path("/tmp/issue14-ab/before"), args.base, args.paths),
        "after": snapshot(Path("/tmp/issue14-ab/after"), None, []),
    }
    rows = {"raw_ort": (in_process_client(model, inputs), {})}
    with contextlib.ExitStack() as stack:
        for name, tree in trees.items():
            work = WORK / f"service-classifier-ab-{name}"
            env = {
                "LESIONSYNTH_CLASSIFIER": str(serving),
                "OMP_NUM_THREADS": "1",
                "LESIONSYNTH_MODEL_STORE": str(work),
                "PYTHONPATH": str(tree),
            }
            svc = stack.enter_context(
                ServiceProcess(CLASSIFIER_TARGET, work, service_env(work / "bentoml", env), cwd=tree)
            )
            print(f"{name}: {tree} at {svc.url}", flush=True)
            extra = dict(server_pids=[svc.proc.pid], metrics_url=svc.url)
            rows[f"rest_classify_{name}"] = (rest_classify_client(svc.url, payloads), extra)
            rows[f"grpc_classify_{name}"] = (grpc_classify_client(svc.grpc_target, payloads), extra)
        assert bench_service  # same start as the benchmark's (ServiceProcess + service_env, cwd = the tree)
        measured: dict[str, list[dict]] = {n: [] for n in rows}
        for k in range(args.rounds):
            for name, (make, extra) in rows.items():
                r = run_load(make, args.clients, 3.0 if k == 0 else args.warmup, args.seconds, **extra)
                measured[name].append(r)
                print(
                    f"round {k + 1} {name}: {len(r['latencies']) / args.seconds:.1f} img/s, "
                    f"other {r['cpu']['other_processes'] / r['wall']:.2f} cores",
                    flush=True,
                )
    results = {n: summarize(rs) for n, rs in measured.items()}
    raw = results["raw_ort"]
    for r in results.values():
        r["ratio_vs_raw_ort"] = round(r["images_per_s"] / raw["images_per_s"], 3)
        r["cpu_efficiency_vs_raw_ort"] = round(
            raw["cpu_ms_per_image"]["ours"] / r["cpu_ms_per_image"]["ours"], 3
        )
    after_vs_before = {
        t: {
            "images_per_s": round(
                results[f"{t}_after"]["images_per_s"] / results[f"{t}_before"]["images_per_s"], 3
            ),
            "server_cpu_ms_per_image": round(
                results[f"{t}_after"]["cpu_ms_per_image"]["server_processes"]
                / results[f"{t}_before"]["cpu_ms_per_image"]["server_processes"],
                3,
            ),
        }
        for t in ("rest_classify", "grpc_classify")
    }
    base = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True
    )
    out = {
        "command": " ".join(["python", str(Path(__file__).relative_to(REPO)), *(argv or sys.argv[1:])]),
        "before": f"working tree with {args.paths} from {args.base} ({base.stdout.strip()})",
        "after": "working tree",
        "clients": args.clients,
        "rounds": args.rounds,
        "seconds_per_row_and_round": args.seconds,
        "after_vs_before": after_vs_before,
        "rows": results,
    }
    (args.out / "ab.json").write_text(json.dumps(out, indent=1) + "\n")
    for n, r in results.items():
        print(
            f"{n:24s} {r['images_per_s']:7.2f} img/s  {r['ratio_vs_raw_ort']:.3f}x raw  "
            f"cpu eff {r['cpu_efficiency_vs_raw_ort']:.3f}  server {r['cpu_ms_per_image']['server_processes']} ms/img"
        )
    print("after / before:", after_vs_before)
    return out


if __name__ == "__main__":
    main()
