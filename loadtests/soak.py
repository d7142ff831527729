"""Soak: a steady, moderate load on the classifier and synthesis services for a long time (default 10
minutes), sampling every service process's resident memory. Passes with zero errors and each process's
RSS growth <= 10% between the end of the warm-up and the end of the run.

    python -m loadtests.soak                      # 10 min, against `make serve` (started if not running)
    python -m loadtests.soak --minutes 1 --out /tmp/soak   # a quick look

Writes docs/soak.json, docs/soak.md and docs/soak.png (RSS over time per process); locust's raw CSVs go to
runs/locust/<name of --out>/ (--csv-dir), outside docs/ (docs/archive/locust/ holds the CSVs of past runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from loadtests.run_load import DEFAULT_ENDPOINTS, LOCUST, REPO, ready

LOADS = {
    # service: (user class, users): moderate, i.e. well below the saturation measured in docs/loadtest.md
    "classifier": ("ClassifierRestUser", 4),
    "synthesis": ("SynthesisRestUser", 2),
}


def service_processes(port: int) -> list[psutil.Process]:
    """The process listening on ``port`` (BentoML's supervisor), with its workers and their children."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            root = psutil.Process(conn.pid)
            while root.parent() and any(
                c.laddr.port == port for c in root.parent().net_connections() if c.laddr
            ):
                root = root.parent()
            return [root, *root.children(recursive=True)]
    raise SystemExit(f"no process listens on port {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the reference sample")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--synthesis-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "soak", help="OUT.json, OUT.md, OUT.png")
    parser.add_argument(
        "--csv-dir", type=Path, help="locust's raw CSVs (default runs/locust/<name of --out>)"
    )
    args = parser.parse_args(argv)
    urls = {name: DEFAULT_ENDPOINTS[name][0] for name in LOADS}
    launcher = None
    if not all(ready(u) for u in urls.values()):
        launcher = subprocess.Popen(
            [sys.executable, "-m", "services.launch"], cwd=REPO, start_new_session=True
        )
        deadline = time.monotonic() + 900
        while not all(ready(u) for u in urls.values()):
            if time.monotonic() > deadline or launcher.poll() is not None:
                raise SystemExit("the services did not come up; see runs/logs/")
            time.sleep(1)
    duration = int(args.minutes * 60)
    procs = {name: service_processes(int(url.rsplit(":", 1)[1])) for name, url in urls.items()}
    workdir = args.csv_dir or REPO / "runs" / "locust" / args.out.name
    workdir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, (user_class, users) in LOADS.items():
        cmd = [str(LOCUST), "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless", "--only-summary"]
        cmd += ["-u", str(users), "-r", str(users), "-t", f"{duration}s", "--host", urls[name]]
        cmd += ["--synthesis-steps", str(args.synthesis_steps), "--csv", str(workdir / name), user_class]
        runs[name] = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[dict] = []
    started = time.monotonic()
    try:
        while any(r.poll() is None for r in runs.values()):
            row = {"t": round(time.monotonic() - started, 1)}
            for name, plist in procs.items():
                for p in plist:
                    try:
                        row[f"{name}:{p.pid}"] = p.memory_info().rss
                    except psutil.NoSuchProcess:
                        row[f"{name}:{p.pid}"] = None
            samples.append(row)
            time.sleep(args.interval)
        return report(samples, workdir, args, duration)  # written before the services are stopped
    finally:
        for r in runs.values():
            if r.poll() is None:
                r.terminate()
        if launcher is not None:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait(120)


def report(samples: list[dict], workdir: Path, args, duration: int) -> int:
    import csv

    from models.artifacts import atomic_write_json, atomic_write_text

    reference = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    last = samples[-1]
    processes = []
    for key in (k for k in last if k != "t"):
        if reference.get(key) and last.get(key):
            growth = (last[key] - reference[key]) / reference[key]
            processes.append(
                {
                    "process": key,
                    "rss_mb_after_warmup": round(reference[key] / 2**20, 1),
                    "rss_mb_end": round(last[key] / 2**20, 1),
                    "growth": round(growth, 4),
                }
            )
    traffic = {}
    for name in LOADS:
        rows = list(csv.DictReader((workdir / f"{name}_stats.csv").open()))
        total = next(r for r in rows if r["Name"] == "Aggregated")
        traffic[name] = {
            "requests": int(total["Request Count"]),
            "failures": int(total["Failure Count"]),
            "rps": round(float(total["Requests/s"]), 2),
            "p99_ms": float(total["99%"]),
        }
    ok = all(t["failures"] == 0 for t in traffic.values()) and all(p["growth"] <= 0.10 for p in processes)
    command = "python -m loadtests.soak " + " ".join(sys.argv[1:])
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "duration_s": duration,
        "warmup_s": args.warmup,
        "traffic": traffic,
        "processes": processes,
        "samples": samples,
        "passed": ok,
    }
    atomic_write_json(args.out.with_suffix(".json"), result)
    plot(samples, args.out.with_suffix(".png"))
    lines = [
        "# Soak",
        "",
        f"Command: `{command}` ({result['date']}); {duration} s of steady load, memory sampled every "
        f"{args.interval:.0f} s, growth measured from the end of a {args.warmup:.0f} s warm-up. "
        f"Plot: {args.out.with_suffix('.png').name}.",
        "",
        "| service | users | requests | failures | req/s | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {LOADS[n][1]} | {t['requests']} | {t['failures']} | {t['rps']} | {t['p99_ms']:.0f} |"
        for n, t in traffic.items()
    ]
    lines += ["", "| process | RSS MB after warm-up | RSS MB at end | growth |", "|---|---:|---:|---:|"]
    lines += [
        f"| {p['process']} | {p['rss_mb_after_warmup']} | {p['rss_mb_end']} | {100 * p['growth']:+.1f}% |"
        for p in processes
    ]
    lines += ["", f"Result: {'PASSED' if ok else 'FAILED'} (zero errors, every process <= +10%)."]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for key in (k for k in samples[-1] if k != "t"):
        xs = [s["t"] / 60 for s in samples if s.get(key)]
        ys = [s[key] / 2**20 for s in samples if s.get(key)]
        if ys and max(ys) > 50:  # the worker processes; tiny helper processes would only clutter
            ax.plot(xs, ys, label=key)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("Resident memory per service process under steady load")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
