"""Run the locust scenarios headless against `make serve` and summarise them.

    python -m loadtests.run_load                       # every scenario, 16 users, 60 s each
    python -m loadtests.run_load --users 4 --duration 10 --scenarios classifier-rest,classifier-grpc

Services are used where they answer (default ports, or --*-url / --*-grpc); when none answers, this
starts them with `python -m services.launch` and stops them at the end. docs/loadtest.md (+ .json) has
throughput, p50/p95/p99 and errors per scenario; locust's raw CSVs go to runs/locust/loadtest/<scenario>_*.csv
(--csv-dir), outside docs/ (docs/ keeps the summaries; docs/archive/locust/ holds the CSVs of past runs).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.harness import default_endpoints

REPO = Path(__file__).resolve().parents[1]
LOCUST = Path(sys.executable).with_name("locust")


@dataclass(frozen=True)
class Scenario:
    name: str
    service: str
    user_class: str


SCENARIOS = [
    Scenario("classifier-rest", "classifier", "ClassifierRestUser"),
    Scenario("classifier-rest-batch", "classifier", "ClassifierBatchRestUser"),
    Scenario("classifier-grpc", "classifier", "ClassifierGrpcUser"),
    Scenario("synthesis-rest", "synthesis", "SynthesisRestUser"),
    Scenario("synthesis-grpc", "synthesis", "SynthesisGrpcUser"),
    Scenario("training-rest", "training", "TrainingRestUser"),
    Scenario("training-grpc", "training", "TrainingGrpcUser"),
]
DEFAULT_ENDPOINTS = default_endpoints()  # `make serve`'s ports


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_scenario(
    scenario: Scenario,
    url: str,
    grpc_target: str,
    users: int,
    spawn_rate: float,
    duration: int,
    csv_prefix: Path,
    synthesis_steps: int = 5,
) -> dict:
    """One headless locust run; returns the aggregated row (requests, failures, rps, percentiles)."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(LOCUST), "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless", "--only-summary"]
    cmd += ["-u", str(users), "-r", str(spawn_rate), "-t", f"{duration}s", "--host", url]
    cmd += ["--grpc-target", grpc_target, "--synthesis-steps", str(synthesis_steps), "--csv", str(csv_prefix)]
    cmd += ["--stop-timeout", "30", scenario.user_class]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=duration + 180)
    rows = list(csv.DictReader((csv_prefix.parent / f"{csv_prefix.name}_stats.csv").open()))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    return {
        "scenario": scenario.name,
        "user_class": scenario.user_class,
        "users": users,
        "duration_s": duration,
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "rps": round(float(total["Requests/s"]), 2),
        "p50_ms": float(total["50%"]),
        "p95_ms": float(total["95%"]),
        "p99_ms": float(total["99%"]),
        "max_ms": round(float(total["Max Response Time"]), 1),
        "locust_exit_code": result.returncode,
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Load tests",
        "",
        f"Command: `{meta['command']}` ({meta['date']}). Machine: {meta['machine']}.",
        f"Users {meta['users']} per scenario (spawn rate {meta['spawn_rate']}/s), {meta['duration']} s each; synthesis "
        f"requests use {meta['synthesis_steps']} DDIM steps. Models: {meta['models']}.",
        f"Locust's raw CSVs per scenario: {meta['csv_dir']}. One noisy shared machine: compare rows, not machines.",
        "",
        "| scenario | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['failures']} | {r['rps']} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def relative(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for the summaries), else as given."""
    try:
        return str(path.resolve().relative_to(REPO)) + "/"
    except ValueError:
        return str(path) + "/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=4)
    parser.add_argument("--duration", type=int, default=60, help="seconds per scenario")
    parser.add_argument("--synthesis-steps", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "loadtest", help="summary: OUT.json + OUT.md"
    )
    parser.add_argument(
        "--csv-dir", type=Path, default=REPO / "runs" / "locust" / "loadtest", help="locust's raw CSVs"
    )
    for name, (url, target) in DEFAULT_ENDPOINTS.items():
        parser.add_argument(f"--{name}-url", default=url)
        parser.add_argument(f"--{name}-grpc", default=target)
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    launcher = None
    if not all(ready(getattr(args, f"{s.service}_url")) for s in chosen):
        print("starting the services (python -m services.launch)", flush=True)
        launcher = subprocess.Popen(
            [sys.executable, "-m", "services.launch"], cwd=REPO, start_new_session=True
        )
        deadline = time.monotonic() + 900
        while not all(ready(getattr(args, f"{s.service}_url")) for s in chosen):
            if time.monotonic() > deadline or launcher.poll() is not None:
                raise SystemExit("the services did not come up; see runs/logs/")
            time.sleep(1)
    try:
        rows = []
        for scenario in chosen:
            url, target = getattr(args, f"{scenario.service}_url"), getattr(args, f"{scenario.service}_grpc")
            print(f"{scenario.name}: {args.users} users, {args.duration} s", flush=True)
            row = run_scenario(
                scenario,
                url,
                target,
                args.users,
                args.spawn_rate,
                args.duration,
                args.csv_dir / scenario.name,
                args.synthesis_steps,
            )
            print(
                f"  {row['rps']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['failures']} failures"
            )
            rows.append(row)
        models = {}
        for service in ("synthesis", "classifier"):
            with_url = getattr(args, f"{service}_url")
            if ready(with_url):
                models[service] = httpx.post(with_url + "/info", timeout=10).json()["model_version"]
        meta = {
            "command": "python -m loadtests.run_load " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "duration": args.duration,
            "synthesis_steps": args.synthesis_steps,
            "models": ", ".join(f"{k} {v}" for k, v in models.items()) or "n/a",
            "csv_dir": relative(args.csv_dir),
        }
        from models.artifacts import atomic_write_json, atomic_write_text

        atomic_write_json(args.out.with_suffix(".json"), {"meta": meta, "rows": rows})
        atomic_write_text(args.out.with_suffix(".md"), markdown(rows, meta))
        print(f"wrote {args.out.with_suffix('.md')}")
        return 0 if all(r["failures"] == 0 for r in rows) else 1
    finally:
        if launcher is not None:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait(120)


if __name__ == "__main__":
    sys.exit(main())
