"""The services benchmark's shared parts: where it works, its targets, and how a window is measured.

``run_load`` drives ``clients`` threads against one row for a measured window and records what finished
in it, with the CPU seconds of this process, of the server process trees and of everything else on the
machine; ``summarize`` pools a row's interleaved rounds. ``bench_service`` starts a service through the
one server harness (services/harness.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loadtests.benchmarks.common import REPO
from services.harness import ServiceProcess, service_env

WORK = REPO / "runs" / "bench-services"
PH2_256 = REPO.parent / "shared" / "data" / "ph2" / "manifest_256.csv"
PH2_SYNTH = REPO / "runs" / "ph2" / "synth-uncond"
#: Issue 14 (was 0.9x / 1.1x in issue 4): classifier service >= 0.95x raw ONNX Runtime at 16 clients;
#: synthesis service <= 1.05x the in-process time per request.
CLASSIFIER_TARGET_RATIO = 0.95
SYNTHESIS_TARGET_RATIO = 1.05
#: A measured window counts as quiet when other processes used less than this many cores during it.
QUIET_OTHER_CORES = 0.25


def bench_service(target: str, work: Path, env: dict[str, str]) -> ServiceProcess:
    """A service on free ports, its BENTOML_HOME and log under ``work``, one OpenMP thread unless ``env``
    says otherwise (enter it: started, then stopped at the end)."""
    return ServiceProcess(target, work, service_env(work / "bentoml", {"OMP_NUM_THREADS": "1", **env}))


def own_cpu() -> float:
    """User + system CPU seconds of this process alone (clients, in-process rows), not its children."""
    t = os.times()
    return t.user + t.system


def process_tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their live descendants."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def system_busy_cpu() -> float:
    import psutil

    t = psutil.cpu_times()
    return (
        sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0)
    )


def scrape(url: str | None) -> dict[str, float]:
    """Prometheus text of ``url/metrics`` -> {sample name: value summed over labels}."""
    if url is None:
        return {}
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def metric_delta(before: dict, after: dict, name: str) -> tuple[float, float]:
    """(sum, count) of histogram ``name`` between two scrapes."""
    return (
        after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0),
        after.get(name + "_count", 0.0) - before.get(name + "_count", 0.0),
    )


SERVER_HISTOGRAMS = {
    "backend_call_ms": "lesionsynth_classifier_inference_seconds",
    "adaptive_batch_size": "bentoml_service_adaptive_batch_size",
}


def run_load(
    make_client: Callable[[int], tuple[Callable[[int], None], Callable[[], None]]],
    clients: int,
    warmup: float,
    duration: float,
    server_pids: list[int] = (),
    metrics_url: str | None = None,
) -> dict:
    """``clients`` threads call ``request(i)`` in a loop; keep what finishes in the measured window."""
    records: list[list[tuple[float, float, bool]]] = [[] for _ in range(clients)]
    first_error: list[str] = []
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    window: dict[str, float] = {}

    def worker(k: int) -> None:
        request, close = make_client(k)
        try:
            ready.wait()
            go.wait()
            end, i = window["end"], k
            while (t0 := time.perf_counter()) < end:
                ok = True
                try:
                    request(i)
                except Exception as exc:  # counted and reported, never fatal to the run
                    ok = False
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                t1 = time.perf_counter()
                records[k].append((t1, t1 - t0, ok))
                i += clients
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    begin = time.perf_counter()
    w0, w1 = begin + warmup, begin + warmup + duration
    window["end"] = w1
    go.set()
    time.sleep(max(0.0, w0 - time.perf_counter()))
    cpu0 = (time.perf_counter(), own_cpu(), process_tree_cpu(server_pids))
    busy0, metrics0 = system_busy_cpu(), scrape(metrics_url)
    time.sleep(max(0.0, w1 - time.perf_counter()))
    cpu1 = (time.perf_counter(), own_cpu(), process_tree_cpu(server_pids))
    busy1, metrics1 = system_busy_cpu(), scrape(metrics_url)
    for t in threads:
        t.join(timeout=120)

    done = [r for rec in records for r in rec if w0 <= r[0] <= w1]
    client_cpu, server_cpu = cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]
    return {
        "seconds": duration,
        "wall": cpu1[0] - cpu0[0],
        "latencies": [lat for _, lat, good in done if good],
        "errors": sum(1 for *_, good in done if not good),
        "first_error": first_error[0] if first_error else None,
        "cpu": {
            "clients_and_in_process": client_cpu,
            "server_processes": server_cpu,
            "other_processes": max(0.0, (busy1 - busy0) - client_cpu - server_cpu),
        },
        "server": {k: metric_delta(metrics0, metrics1, m) for k, m in SERVER_HISTOGRAMS.items()}
        if metrics_url
        else None,
    }


def summarize(rounds: list[dict]) -> dict:
    """One row's figures over its interleaved rounds (throughput = all images / all measured seconds)."""
    seconds = sum(r["seconds"] for r in rounds)
    wall = sum(r["wall"] for r in rounds)
    lat = np.array([x for r in rounds for x in r["latencies"]])
    n = len(lat)
    cpu = {k: sum(r["cpu"][k] for r in rounds) for k in rounds[0]["cpu"]}
    errors = [r["first_error"] for r in rounds if r["first_error"]]
    out = {
        "images_per_s": round(n / seconds, 2),
        "images_per_s_by_round": [round(len(r["latencies"]) / r["seconds"], 2) for r in rounds],
        "other_processes_cores_by_round": [round(r["cpu"]["other_processes"] / r["wall"], 2) for r in rounds],
        "images": n,
        "errors": sum(r["errors"] for r in rounds),
        "first_error": errors[0] if errors else None,
        "latency_ms": {
            f"p{q}": round(float(np.percentile(lat, q)) * 1000, 1) if n else None for q in (50, 95, 99)
        },
        "cpu_cores_used": {k: round(v / wall, 2) for k, v in cpu.items()},
        # CPU of this process (clients; in-process rows) + the servers, per image: what a row costs,
        # less sensitive to how much of the machine other processes took than images/s.
        "cpu_ms_per_image": {
            **{k: round(1000 * v / max(n, 1), 1) for k, v in cpu.items() if k != "other_processes"},
            "ours": round(1000 * (cpu["clients_and_in_process"] + cpu["server_processes"]) / max(n, 1), 1),
        },
    }
    quiet = [r for r in rounds if r["cpu"]["other_processes"] / r["wall"] < QUIET_OTHER_CORES]
    out["quiet_windows"] = len(quiet)
    out["quiet_images_per_s"] = (
        round(sum(len(r["latencies"]) for r in quiet) / sum(r["seconds"] for r in quiet), 2)
        if quiet
        else None
    )
    if rounds[0]["server"] is not None:
        server = {}
        for key in SERVER_HISTOGRAMS:
            total = sum(r["server"][key][0] for r in rounds)
            count = sum(r["server"][key][1] for r in rounds)
            scale = 1000.0 if key.endswith("_ms") else 1.0
            server["mean_" + key] = round(scale * total / count, 2) if count else None
        out["server_metrics"] = server
    return out
