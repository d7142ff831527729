"""Data-parallel synthesizer training: one process with all the cores vs torchrun with one process per core.

The same global batch and steps both ways, on the PH2 lesion regions (64 px, ``small`` UNet):

- ``single``: ``lesionsynth train-synthesizer --batch-size B`` with ``OMP_NUM_THREADS = cores``;
- ``ddp``:    ``torchrun --nproc-per-node P ... --batch-size B/P`` with ``OMP_NUM_THREADS = cores / P``
  (gloo all-reduce of the gradients every step, as NCCL does between GPUs).

Each figure is the run's own ``train_seconds`` from its model card (data loading excluded), interleaved in
rounds so the ratio is fair on a noisy machine. On a CPU this measures what data parallelism costs (the
gradient all-reduce, smaller per-process matrix products), not what it buys: on GPUs each process has its
own device. Writes docs/benchmarks/data_parallel.json + .md.

    python -m loadtests.benchmarks.data_parallel [--steps 40 --rounds 3 --batch 16 --processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.benchmarks.common import (
    PH2_MANIFEST,
    PH2_NAME,
    REPO,
    ph2_split_manifest,
    round_ratios,
    write_report,
)
from models.torchrun import torchrun_command, torchrun_env


def train_args(manifest: Path, out: Path, steps: int, batch: int) -> list[str]:
    return [
        "train-synthesizer",
        f"--manifest={manifest}",
        "--lesion-label=lesion",
        f"--out={out}",
        "--resolution=64",
        "--preset=small",
        f"--max-steps={steps}",
        f"--batch-size={batch}",
        f"--checkpoint-every={steps}",
        "--device=cpu",
        "--no-progress",
    ]


def run(command: list[str], threads: int, out: Path) -> dict:
    env = torchrun_env(1, {**os.environ, "OMP_NUM_THREADS": str(threads)})  # threads per process as given
    env["MKL_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads((out / "model_card.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="global batch (both ways)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if not PH2_MANIFEST.is_file():
        raise SystemExit(f"needs the PH2 data at {PH2_MANIFEST}")
    if args.batch % args.processes:
        raise SystemExit("--batch must be a multiple of --processes")
    cores = os.cpu_count() or 1
    manifest = ph2_split_manifest()
    results: dict[str, list[float]] = {"single": [], "ddp": []}
    losses: dict[str, list[float]] = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            one = Path(tmp) / f"single-{r}"
            card = run(
                [sys.executable, "-m", "lesionsynth.cli", *train_args(manifest, one, args.steps, args.batch)],
                cores,
                one,
            )
            results["single"].append(args.steps * args.batch / card["train_seconds"])
            losses["single"].append(card["loss_curve"][-1][1])
            many = Path(tmp) / f"ddp-{r}"
            per = args.batch // args.processes
            card = run(
                torchrun_command(
                    args.processes, train_args(manifest, many, args.steps, per), "lesionsynth.cli"
                ),
                max(1, cores // args.processes),
                many,
            )
            assert card["processes"] == args.processes
            results["ddp"].append(args.steps * args.batch / card["train_seconds"])
            losses["ddp"].append(card["loss_curve"][-1][1])
            print(
                f"round {r}: single {results['single'][-1]:.1f} img/s, ddp {results['ddp'][-1]:.1f} img/s",
                flush=True,
            )
    ratios, median = round_ratios(results["ddp"], results["single"])
    command = "python -m loadtests.benchmarks.data_parallel " + " ".join(argv or [])
    summary = {
        "command": command.strip(),
        "data": PH2_NAME,
        "model": f"diffusers UNet2DModel, `small` preset, 64 px, global batch {args.batch}, {args.steps} steps",
        "machine": f"{platform.machine()}, {cores} cores, no GPU",
        "processes": args.processes,
        "images_per_s": {k: [round(v, 2) for v in vs] for k, vs in results.items()},
        "final_loss": {k: [round(v, 4) for v in vs] for k, vs in losses.items()},
        "ratio_ddp_vs_single_per_round": ratios,
        "ratio_median": median,
    }
    md = [
        "# Data-parallel synthesizer training on the CPU: torchrun x processes vs one process",
        "",
        f"Command: `{summary['command']}` ({time.strftime('%Y-%m-%d')}); {summary['machine']}; data "
        f"{summary['data']}; {summary['model']}.",
        f"`single`: one process, {cores} threads, batch {args.batch}. `ddp`: torchrun, {args.processes} processes x "
        f"{max(1, cores // args.processes)} thread(s), batch {args.batch // args.processes} each, gloo all-reduce.",
        "Images/s from each run's own train_seconds (model card), rounds interleaved.",
        "",
        "| round | single img/s | ddp img/s | ddp / single | final loss single / ddp |",
        "|---:|---:|---:|---:|---|",
    ]
    for i, ratio in enumerate(ratios):
        md.append(
            f"| {i} | {results['single'][i]:.1f} | {results['ddp'][i]:.1f} | {ratio:.3f} | "
            f"{losses['single'][i]:.4f} / {losses['ddp'][i]:.4f} |"
        )
    md += [
        "",
        f"Median ratio: **{summary['ratio_median']}**. On a CPU both ways share the same cores, so this is the",
        "price of data parallelism (a gradient all-reduce per step, smaller matrix products per process), not",
        "its gain; on GPUs each process has a device of its own. Not measured here: no GPU on this machine.",
    ]
    write_report(args.out, "data_parallel", summary, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
