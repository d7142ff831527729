"""GPU check (issue 14, section 4): the training paths on a CUDA GPU, compared with the committed CPU figures.

    make gpu-check        # = python -m loadtests.benchmarks.gpu_check [--steps 40] [--wheels DIR] [--out DIR]

With no CUDA GPU it prints "no CUDA GPU: nothing measured; this script is for a GPU machine" (torch's
version, torch.cuda.is_available()), measures nothing and exits 0 (EXIT_NO_GPU); it writes that outcome
to <out>/gpu.json|md only when --out is given. With a GPU it exits 1 when a part failed (its error is
in the report), else 0. With a GPU (each part bounded; about 3-5 minutes in all,
under 8) it measures, on the procedurally generated demo data (models/data/demo.py, no download):

1. a synthesizer training run (models.diffusion.train, TrainSettings) under AMP: bf16 where the GPU has
   it, else fp16 + GradScaler (models/devices.py); images/s from its own train_seconds;
2. the synthesizer's UNet (`small` preset, 64 px) forward+backward at batch 64 under the same AMP: crops/s;
3. the classifier (ResNet-50 at 224 px) on demo images, a few training batches: images/s;
4. DDP over one GPU with NCCL: the UNet of 2. in DistributedDataParallel on a one-rank NCCL group
   (crops/s), and torchrun, one process, `lesionsynth.cli train-synthesizer --device cuda` (images/s);

and compares them with docs/benchmarks/training.json and data_parallel.json (CPU, 2 cores). Writes
docs/benchmarks/gpu.json + gpu.md (or --out DIR).

A bare "Python 3.12 + torch" machine without network lacks what the project imports beyond torch:
torchvision, diffusers (with huggingface_hub, safetensors, regex, requests, filelock, importlib_metadata),
numpy, pillow, scipy, tqdm, typer, rich, PyYAML. Bring them as wheels from a machine with network:

    pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \\
        -d wheels torchvision==0.29.1 diffusers==0.42.1 safetensors==0.8.0 numpy==2.3.5 pillow==13.0.0 \\
        scipy==1.17.1 tqdm==4.70.1 typer==0.29.2 rich==15.0.0 PyYAML==6.0.3 --no-deps  # and their deps
    # on the GPU machine (torch already there):
    pip install --no-index --find-links wheels torchvision diffusers safetensors numpy pillow scipy ...
    # or let this script do it first:  python -m loadtests.benchmarks.gpu_check --wheels wheels

(torchvision must match the installed torch's version and CUDA build; pick its wheel accordingly.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "benchmarks"
EXIT_NO_GPU = 0  # documented: a CPU machine is not an error, nothing is measured
NO_GPU = "no CUDA GPU: nothing measured; this script is for a GPU machine"
WHEEL_PACKAGES = [
    "torchvision",
    "diffusers",
    "safetensors",
    "numpy",
    "pillow",
    "scipy",
    "tqdm",
    "typer",
    "rich",
    "PyYAML",
]


def install_wheels(folder: Path) -> None:
    """pip-install the packages this script needs from a folder of wheels (no network)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(folder),
        *WHEEL_PACKAGES,
    ]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def machine() -> dict:
    info = {
        "platform": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if info["cuda_available"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def cpu_figures(docs: Path = DOCS) -> dict:
    """The committed CPU figures (absent files are skipped)."""
    out = {}
    for name in ("training", "data_parallel"):
        path = docs / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def compare_with_cpu(gpu: dict, cpu: dict) -> list[dict]:
    """Rows (what, gpu, cpu, ratio gpu/cpu) for the GPU figures that have a CPU counterpart.

    ``gpu``: {"recipe_images_per_s", "unet_crops_per_s", "ddp_images_per_s"} (any may be missing);
    ``cpu``: as :func:`cpu_figures` returns. CPU figures are the medians over their rounds."""

    def median(doc: str, key: str) -> float | None:
        values = cpu.get(doc, {}).get("images_per_s", {}).get(key)
        return statistics.median(values) if values else None

    pairs = [
        ("synthesizer recipe, img/s", "recipe_images_per_s", median("training", "recipe")),
        ("UNet fwd+bwd, crops/s (CPU: plain loop, batch 8)", "unet_crops_per_s", median("training", "plain")),
        (
            "DDP train-synthesizer, img/s (CPU: gloo, 2 procs)",
            "ddp_images_per_s",
            median("data_parallel", "ddp"),
        ),
    ]
    rows = []
    for what, key, cpu_value in pairs:
        value = gpu.get(key)
        if value is None or cpu_value is None:
            continue
        rows.append(
            {
                "what": what,
                "gpu": round(value, 2),
                "cpu": round(cpu_value, 2),
                "ratio": round(value / cpu_value, 1),
            }
        )
    return rows


def demo_manifest(folder: Path, n: int = 24) -> Path:
    """The procedural demo data at 128 px with a train/val/test split (what training reads)."""
    from models.data.demo import write_demo_dataset
    from models.data.manifest import load_manifest
    from models.data.split import add_split

    path = write_demo_dataset(folder, n_lesion=n, n_normal=n, size=128)
    manifest = load_manifest(path)
    add_split(manifest, test_fraction=0.25, val_fraction=0.1, seed=0)
    manifest.save(path)
    return path


def synth_settings(manifest: Path, out: Path, steps: int, batch: int):
    from models.diffusion.train import TrainSettings

    return TrainSettings(
        manifest=manifest, lesion_label="lesion", out=out, resolution=64, preset="small", max_steps=steps,
        batch_size=batch, checkpoint_every=steps, log_every=steps, progress=False, device="cuda",
    )  # fmt: skip


def measure_recipe(manifest: Path, tmp: Path, steps: int, batch: int) -> dict:
    from models.diffusion.train import train_synthesizer

    card = train_synthesizer(synth_settings(manifest, tmp / "recipe", steps, batch))
    return {
        "recipe_images_per_s": steps * batch / card["train_seconds"],
        "recipe_final_loss": card["loss_curve"][-1][1],
    }


def measure_unet(steps: int, batch: int = 64, budget_s: float = 60.0, nccl: bool = False) -> float:
    """Forward+backward of the `small` UNet at 64 px under AMP: crops/s (after 3 warm-up steps).

    ``nccl``: the UNet in DistributedDataParallel over a one-rank NCCL process group (a one-process
    torchrun leaves models/distributed.py's DataParallel disabled, so NCCL is exercised here directly)."""
    if not nccl:
        return _unet_steps(steps, batch, budget_s, wrap=None)
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        return _unet_steps(steps, batch, budget_s, wrap=lambda m: DistributedDataParallel(m, device_ids=[0]))
    finally:
        dist.destroy_process_group()


def _unet_steps(steps: int, batch: int, budget_s: float, wrap) -> float:
    import torch.nn.functional as F

    from models.devices import autocast_for, backward_step
    from models.diffusion.config import SynthesizerConfig, build_train_scheduler, build_unet

    device = torch.device("cuda")
    config = SynthesizerConfig(resolution=64, preset="small")
    unet = build_unet(config).to(device).train()
    if wrap is not None:
        unet = wrap(unet)
    scheduler = build_train_scheduler(config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4)
    autocast, scaler = autocast_for(device)
    x0 = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
    done, started = 0, None
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            started = time.perf_counter()
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        with autocast():
            loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample.float(), noise)
        backward_step(loss, unet, optimizer, scaler)
        done += i >= 3
        if started and time.perf_counter() - started > budget_s:
            break
    torch.cuda.synchronize()
    return done * batch / (time.perf_counter() - started)


def measure_classifier(manifest: Path, batches: int, batch: int = 32) -> float:
    """ResNet-50 at 224 on the demo images, training steps under AMP: images/s (after 2 warm-up steps)."""
    import torch.nn.functional as F

    from models.classifier.config import ClassifierConfig, build_classifier
    from models.classifier.data import ImageTable
    from models.data.manifest import load_manifest
    from models.devices import autocast_for, backward_step

    device = torch.device("cuda")
    config = ClassifierConfig(arch="resnet50", image_size=224)
    rows = list(load_manifest(manifest).rows)
    table = ImageTable.from_rows(rows, "lesion", config.image_size)
    net = build_classifier(config).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    autocast, scaler = autocast_for(device)
    generator = torch.Generator().manual_seed(0)
    started = None
    for i in range(batches + 2):
        if i == 2:
            torch.cuda.synchronize()
            started = time.perf_counter()
        idx = torch.randint(0, len(table), (batch,), generator=generator)
        x, y = table.batch(idx, config, generator)
        with autocast():
            logits = net(x.to(device, non_blocking=True)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y.to(device))
        backward_step(loss, net, optimizer, scaler)
    torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - started)


def measure_ddp(manifest: Path, tmp: Path, steps: int, batch: int, timeout_s: float = 180.0) -> dict:
    """torchrun, one process, NCCL: `lesionsynth.cli train-synthesizer --device cuda`."""
    from models.torchrun import torchrun_command, torchrun_env

    out = tmp / "ddp"
    args = [
        "train-synthesizer", f"--manifest={manifest}", "--lesion-label=lesion", f"--out={out}",
        "--resolution=64", "--preset=small", f"--max-steps={steps}", f"--batch-size={batch}",
        f"--checkpoint-every={steps}", "--device=cuda", "--no-progress",
    ]  # fmt: skip
    command = torchrun_command(1, args, "lesionsynth.cli")
    env = torchrun_env(1)
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        return {"ddp_error": (done.stdout[-1000:] + done.stderr[-2000:]).strip()}
    card = json.loads((out / "model_card.json").read_text())
    return {
        "ddp_images_per_s": steps * batch / card["train_seconds"],
        "ddp_processes": card.get("processes", 1),
    }


def timed(name: str, fn, figures: dict, errors: dict) -> None:
    """Run one part; a failure is recorded, the other parts still run."""
    tic = time.perf_counter()
    try:
        result = fn()
        figures.update(result if isinstance(result, dict) else {name: result})
    except Exception as exc:  # noqa: BLE001 - one part's failure is a figure of the report
        errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
    print(f"{name}: {time.perf_counter() - tic:.1f} s", flush=True)


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = ["# GPU check: the training paths on a CUDA GPU", "", f"Command: `{summary['command']}` ({summary['date']}); "
             f"{m['platform']}, torch {m['torch']}, cuda available: {m['cuda_available']}."]  # fmt: skip
    if not m["cuda_available"]:
        return "\n".join([*lines, "", f"**{NO_GPU}.**", ""])
    lines += [f"GPU: {m['gpu']} (CUDA {m['cuda']}), AMP {summary['amp']}; data: demo (procedural).", ""]
    lines += ["| figure | value |", "|---|---:|"]
    lines += [
        f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in summary["figures"].items()
    ]
    if summary["vs_cpu"]:
        lines += [
            "",
            "Against the committed CPU figures (docs/benchmarks/training.json, data_parallel.json):",
            "",
        ]
        lines += ["| figure | GPU | CPU | GPU / CPU |", "|---|---:|---:|---:|"]
        lines += [f"| {r['what']} | {r['gpu']} | {r['cpu']} | {r['ratio']}x |" for r in summary["vs_cpu"]]
    for name, error in summary["errors"].items():
        lines += ["", f"- {name} failed: `{error.splitlines()[-1] if error else ''}`"]
    return "\n".join(lines) + "\n"


def write(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / "gpu.md").write_text(markdown(summary))
    print(f"wrote {out / 'gpu.json'} and .md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="steps per synthesizer run / UNet timing")
    parser.add_argument("--batch", type=int, default=16, help="synthesizer recipe and DDP batch")
    parser.add_argument("--classifier-batches", type=int, default=10)
    parser.add_argument("--wheels", type=Path, help="pip-install the needed packages from this folder first")
    parser.add_argument(
        "--out", type=Path, help=f"where gpu.json|md go (GPU default: {DOCS}; CPU: not written)"
    )
    args = parser.parse_args(argv)
    if args.wheels:
        install_wheels(args.wheels)
    summary = {
        "command": ("python -m loadtests.benchmarks.gpu_check " + " ".join(argv or sys.argv[1:])).strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
    }
    if not torch.cuda.is_available():
        print(f"{NO_GPU} (torch {torch.__version__}, torch.cuda.is_available() = False)")
        summary.update(measured=False, outcome=NO_GPU)
        if args.out:
            write(args.out, summary)
        return EXIT_NO_GPU
    summary["amp"] = "bf16" if summary["machine"]["bf16"] else "fp16 + GradScaler"
    figures: dict = {}
    errors: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manifest = demo_manifest(tmp / "demo")
        timed("recipe", lambda: measure_recipe(manifest, tmp, args.steps, args.batch), figures, errors)
        timed("unet_crops_per_s", lambda: measure_unet(args.steps), figures, errors)
        timed("nccl_ddp_unet_crops_per_s", lambda: measure_unet(args.steps, nccl=True), figures, errors)
        timed(
            "classifier_images_per_s",
            lambda: measure_classifier(manifest, args.classifier_batches),
            figures,
            errors,
        )
        timed("ddp", lambda: measure_ddp(manifest, tmp, args.steps, args.batch), figures, errors)
    if "ddp_error" in figures:
        errors["ddp"] = figures.pop("ddp_error")
    summary.update(
        measured=True, figures=figures, errors=errors, vs_cpu=compare_with_cpu(figures, cpu_figures())
    )
    print(json.dumps(summary, indent=2))
    write(args.out or DOCS, summary)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
