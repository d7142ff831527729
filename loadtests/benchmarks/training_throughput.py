"""Training throughput: our synthesizer recipe vs a plain PyTorch DDPM loop on the same UNet and data.

The recipe (models/diffusion/train.py) adds, per step, dihedral + colour augmentation, an EMA update,
gradient clipping, a learning-rate warm-up and periodic checkpoints; the plain loop is what a reader would
write in 20 lines (random in-memory batch, add noise, MSE, AdamW). Both run the same number of steps at
the same batch size in this process, interleaved in rounds, so the ratio is fair on a noisy machine.

    python -m loadtests.benchmarks.training_throughput [--steps 60 --rounds 3]

Writes docs/benchmarks/training.json + .md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from loadtests.benchmarks.common import (
    PH2_MANIFEST,
    PH2_NAME,
    REPO,
    ph2_split_manifest,
    round_ratios,
    write_report,
)
from models.data.manifest import load_manifest
from models.diffusion.config import SynthesizerConfig, build_train_scheduler, build_unet
from models.diffusion.crops import LesionCrops
from models.diffusion.train import TrainSettings, train_synthesizer


def plain_loop(crops: LesionCrops, config: SynthesizerConfig, steps: int, batch: int, seed: int = 0) -> float:
    """The plain loop; returns images per second."""
    torch.manual_seed(seed)
    unet = build_unet(config).train()
    scheduler = build_train_scheduler(config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4, weight_decay=1e-2)
    images = crops.images  # (N, 3, R, R) in [-1, 1], as the recipe's batches
    started = time.perf_counter()
    for _ in range(steps):
        x0 = images[torch.randint(0, len(images), (batch,))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def recipe(manifest: Path, config: SynthesizerConfig, steps: int, batch: int) -> float:
    """Our recipe end to end minus data loading: images per second from its own train_seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        card = train_synthesizer(
            TrainSettings(
                manifest=manifest,
                lesion_label="lesion",
                out=Path(tmp) / "model",
                **config.to_dict(),
                max_steps=steps,
                batch_size=batch,
                checkpoint_every=max(1, steps // 2),  # one mid-run checkpoint, as a long run has
                log_every=steps,
                progress=False,
                device="cpu",
            )
        )
    return steps * batch / card["train_seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if not PH2_MANIFEST.is_file():
        raise SystemExit(f"needs the PH2 data at {PH2_MANIFEST}")
    manifest = ph2_split_manifest()
    config = SynthesizerConfig(resolution=64, preset="small")
    rows = load_manifest(manifest).rows_in("train", "lesion")
    crops = LesionCrops.from_rows(rows, config.resolution, config.margin)
    results = {"plain": [], "recipe": []}
    for r in range(args.rounds):
        results["plain"].append(plain_loop(crops, config, args.steps, args.batch, seed=r))
        results["recipe"].append(recipe(manifest, config, args.steps, args.batch))
        print(
            f"round {r}: plain {results['plain'][-1]:.1f} img/s, recipe {results['recipe'][-1]:.1f} img/s",
            flush=True,
        )
    ratios, median = round_ratios(results["recipe"], results["plain"])
    summary = {
        "command": "python -m loadtests.benchmarks.training_throughput " + " ".join(argv or []),
        "data": PH2_NAME,
        "model": f"diffusers UNet2DModel, `small` preset, 64 px, batch {args.batch}, {args.steps} steps per run",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "images_per_s": {k: [round(v, 2) for v in vs] for k, vs in results.items()},
        "ratio_recipe_vs_plain_per_round": ratios,
        "ratio_median": median,
    }
    md = [
        "# Training throughput: our synthesizer recipe vs a plain PyTorch loop",
        "",
        f"Command: `{summary['command'].strip()}` ({time.strftime('%Y-%m-%d')}); {summary['machine']}, "
        f"{summary['torch_threads']} torch threads; data {summary['data']}; {summary['model']}.",
        "Interleaved rounds in one process; the recipe's figure is its own train_seconds (data loading excluded,",
        "augmentation, EMA, clipping, warm-up and one checkpoint included).",
        "",
        "| round | plain loop img/s | recipe img/s | recipe / plain |",
        "|---:|---:|---:|---:|",
    ]
    for i, ratio in enumerate(ratios):
        md.append(f"| {i} | {results['plain'][i]:.1f} | {results['recipe'][i]:.1f} | {ratio:.3f} |")
    md += ["", f"Median ratio: **{summary['ratio_median']}** (1.0 = as fast as the plain loop)."]
    write_report(args.out, "training", summary, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
