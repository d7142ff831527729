"""The ``lesionsynth`` command line.

Each command is a thin wrapper over a function in ``models`` (the services call the same functions).
Heavy imports (torch, diffusers) happen inside commands so ``--help`` is instant. Every error a user can
fix is a :class:`~models.errors.LesionsynthError`: it is printed as one clear message and the command
exits with status 2 without writing its output.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from models.errors import LesionsynthError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
data_app = typer.Typer(no_args_is_help=True, help="Dataset manifests: check, split, demo data.")
app.add_typer(data_app, name="data")
err = Console(stderr=True)


def user_errors(fn):
    """Turn LesionsynthError into a red one-line (or one-list) message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LesionsynthError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


ManifestOpt = Annotated[
    Path, typer.Option("--manifest", "-m", help="CSV manifest (image_path,mask_path,label,...)")
]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
# Sampler options: None means the measured defaults of models.diffusion.inpaint.SamplerSettings.
StepsOpt = Annotated[int | None, typer.Option(help="DDIM steps (default 25).")]
RemoteOpt = Annotated[
    str | None,
    typer.Option(help="URL of a synthesis service to paint with (token from LESIONSYNTH_API_TOKEN)."),
]
StrengthOpt = Annotated[
    float | None, typer.Option(help="Starting noise level in (0, 1]; 1 = pure noise (default).")
]
EtaOpt = Annotated[float | None, typer.Option(help="Sampler stochasticity in [0, 1] (default 1).")]
ResampleOpt = Annotated[
    int | None,
    typer.Option(help="Takes per step, RePaint-style resampling (default 1; each more = 1x time)."),
]
GuidanceOpt = Annotated[
    float | None,
    typer.Option(
        help="Class-conditional synthesizers: guidance toward the lesion class (default 1; not 1 = 2x time)."
    ),
]


@data_app.command("check")
@user_errors
def data_check(
    manifest: ManifestOpt,
    labels: Annotated[str | None, typer.Option(help="Comma-separated allowed labels.")] = None,
) -> None:
    """Validate every row (files, decoding, sizes, masks, labels) and list all problems at once."""
    from models.data.manifest import load_manifest

    m = load_manifest(manifest, labels.split(",") if labels else None, progress=True)
    counts = {lab: sum(r.label == lab for r in m.rows) for lab in m.labels()}
    typer.echo(f"ok: {len(m.rows)} rows, labels {counts}")


@data_app.command("split")
@user_errors
def data_split(
    manifest: ManifestOpt,
    test_fraction: Annotated[float, typer.Option(help="Fraction of each label for test.")] = 0.2,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each label for validation.")] = 0.1,
    seed: SeedOpt = 0,
    out: Annotated[Path | None, typer.Option(help="Write here instead of over --manifest.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing split column.")] = False,
) -> None:
    """Add a stratified train/val/test `split` column (test rows are never used for training)."""
    from models.data.manifest import load_manifest
    from models.data.split import add_split

    m = load_manifest(manifest, progress=True)
    counts = add_split(m, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, force=force)
    target = m.save(out)
    for (split, label), n in sorted(counts.items()):
        typer.echo(f"{split:5s} {label:20s} {n}")
    typer.echo(f"wrote {target}")


@data_app.command("draw-roles")
@user_errors
def data_draw_roles(
    manifest: ManifestOpt,
    plan: Annotated[Path, typer.Option(help="YAML: seed, stratify, counts {role: {label: n | rest}}.")],
    out: Annotated[Path, typer.Option(help="The role file (CSV) to write.")],
    force: Annotated[bool, typer.Option(help="Replace an existing role file.")] = False,
) -> None:
    """Give every image a role (test / val / pool / ...), drawn once: the fixed split of a benchmark."""
    import yaml

    from models.data.manifest import read_manifest
    from models.data.roles import draw_roles, write_role_file

    if out.exists() and not force:
        raise LesionsynthError(
            f"{out} exists; redrawing can move test images into training. Pass --force if you mean it."
        )
    spec = yaml.safe_load(plan.read_text())
    m = read_manifest(manifest)
    assignment = draw_roles(m.rows, spec["counts"], int(spec["seed"]), spec.get("stratify", "diagnosis"))
    write_role_file(out, m.rows, assignment)
    from collections import Counter

    for (role, label), n in sorted(
        Counter((assignment[r.fields["image_path"]], r.label) for r in m.rows).items()
    ):
        typer.echo(f"{role:8s} {label:20s} {n}")
    typer.echo(f"wrote {out}")


@data_app.command("demo")
@user_errors
def data_demo(
    out: Annotated[Path, typer.Argument(help="Folder to write the demo dataset into.")],
    n_lesion: int = 24,
    n_normal: int = 72,
    size: int = 64,
    seed: SeedOpt = 0,
) -> None:
    """Write a small procedurally generated, NON-MEDICAL demo dataset (images, masks, manifest)."""
    from models.data.demo import write_demo_dataset

    path = write_demo_dataset(out, n_lesion=n_lesion, n_normal=n_normal, size=size, seed=seed, progress=True)
    typer.echo(f"wrote {path} (synthetic non-medical demo data)")


@app.command("train-synthesizer")
@user_errors
def train_synthesizer_cmd(
    manifest: ManifestOpt,
    lesion_label: Annotated[str, typer.Option(help="Label of the lesion class to learn.")],
    out: Annotated[Path, typer.Option(help="Output model folder.")],
    resolution: Annotated[int, typer.Option(help="Crop side the UNet sees: 32, 64, 96, 128 or 256.")] = 64,
    preset: Annotated[str, typer.Option(help="UNet size: tiny, small, base.")] = "small",
    mask_conditioning: Annotated[bool, typer.Option(help="Give the UNet the mask as a 4th channel.")] = False,
    num_classes: Annotated[
        int, typer.Option(help="0: lesion regions only (paper 000); 2: class-conditional on both classes.")
    ] = 0,
    normal_label: Annotated[
        str | None, typer.Option(help="With --num-classes 2: the label whose regions are the normal class.")
    ] = None,
    label_dropout: Annotated[
        float,
        typer.Option(help="With --num-classes 2: how often a region's class is dropped (for guidance)."),
    ] = 0.1,
    all_regions: Annotated[
        bool, typer.Option(help="Pre-training: learn the regions of every train row, whatever its label.")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Fine-tune: start from this synthesizer folder's weights (same architecture)."),
    ] = None,
    max_steps: int = 2000,
    batch_size: int = 8,
    learning_rate: float = 2e-4,
    checkpoint_every: int = 500,
    snapshot_steps: Annotated[
        str | None, typer.Option(help="Comma-separated steps to also save as OUT/snapshots/step-N/ models.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
    seed: SeedOpt = 0,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Draw progress bars.")] = True,
    progress_file: Annotated[
        Path | None, typer.Option(hidden=True, help="Also keep the current bar in this JSON file (rank 0).")
    ] = None,
) -> None:
    """Train the DDPM on the masked lesion regions of the `train` lesion images (paper 000).

    Data-parallel on N GPUs: `torchrun --nproc-per-node N -m models.cli train-synthesizer ... --device cuda`
    (--batch-size is per process). Paper 002's recipe in two runs: `--all-regions` (every region,
    unconditional), then `--init-from` that folder on the lesion regions."""
    from models.diffusion.config import SynthesizerConfig
    from models.diffusion.train import TrainSettings, train_synthesizer
    from models.distributed import DataParallel

    if progress_file is not None and DataParallel.from_env().is_main:
        from models.progress import JsonFileSink, set_sink

        set_sink(JsonFileSink(progress_file))
    config = SynthesizerConfig(
        resolution=resolution, preset=preset, mask_conditioning=mask_conditioning, num_classes=num_classes
    )
    card = train_synthesizer(
        TrainSettings(
            manifest=manifest,
            lesion_label=lesion_label,
            normal_label=normal_label,
            label_dropout=label_dropout,
            all_regions=all_regions,
            init_from=init_from,
            out=out,
            config=config,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            checkpoint_every=checkpoint_every,
            snapshot_steps=tuple(int(v) for v in snapshot_steps.split(",")) if snapshot_steps else (),
            resume=resume,
            seed=seed,
            device=device,
            progress=progress,
        )
    )
    if not DataParallel.from_env().is_main:
        return  # rank 0 reports
    last = card["loss_curve"][-1][1] if card["loss_curve"] else float("nan")
    typer.echo(f"wrote {out} (model version {card['model_version']}, {card['steps']} steps, loss {last:.4f})")


@app.command("synthesize")
@user_errors
def synthesize_cmd(
    image: Annotated[Path, typer.Option(help="Input image.")],
    mask: Annotated[Path, typer.Option(help="Mask: > 127 marks where to paint the lesion.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    model: Annotated[Path | None, typer.Option(help="Synthesizer folder (or use --remote).")] = None,
    remote: RemoteOpt = None,
    seed: SeedOpt = 0,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    eta: EtaOpt = None,
    resample: ResampleOpt = None,
    guidance: GuidanceOpt = None,
) -> None:
    """Paint a synthetic lesion into the masked region of one image (here, or on a synthesis service)."""
    from models.artifacts import atomic_write_bytes
    from models.data.images import decode_image, decode_mask, encode_png
    from models.errors import ConfigError

    img = decode_image(image, role="image")
    msk = decode_mask(mask, role="mask")
    settings = dict(seed=seed, steps=steps, strength=strength, eta=eta, resample=resample, guidance=guidance)
    if remote:
        result = remote_inpainter(remote).inpaint(img, msk, **settings)
    elif model is None:
        raise ConfigError("give --model FOLDER or --remote URL")
    else:
        from models.diffusion.inpaint import LesionInpainter

        result = LesionInpainter.from_pretrained(model).inpaint(img, msk, **settings)
    atomic_write_bytes(out, encode_png(result))
    typer.echo(f"wrote {out}")


def remote_inpainter(url: str, concurrency: int = 4, progress: bool = False):
    """The synthesis service at ``url`` as an inpainter (token from LESIONSYNTH_API_TOKEN).

    The only place models/ reaches into services/: the HTTP client is imported here, on demand.
    """
    from services.client import SynthesisClient
    from services.client.remote_inpainter import RemoteInpainter

    return RemoteInpainter(SynthesisClient(url, max_concurrency=concurrency), progress=progress)


@app.command("balance")
@user_errors
def balance_cmd(
    manifest: ManifestOpt,
    normal_label: Annotated[str, typer.Option(help="Label of the images to transform.")],
    lesion_label: Annotated[str, typer.Option(help="Label the synthetic images get.")],
    count: Annotated[int, typer.Option(help="How many synthetic lesion images to make.")],
    out: Annotated[Path, typer.Option(help="Output folder (manifest.csv + synthetic/).")],
    seed: SeedOpt = 0,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    eta: EtaOpt = None,
    resample: ResampleOpt = None,
    guidance: GuidanceOpt = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per UNet batch (per wave of requests with --remote).")
    ] = 8,
    model: Annotated[Path | None, typer.Option(help="Synthesizer folder (or use --remote).")] = None,
    remote: RemoteOpt = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight with --remote.")] = 4,
) -> None:
    """Turn COUNT normal train images into synthetic lesions; write the balanced manifest (resumable)."""
    from models.balance import BalanceSettings, balance_dataset

    inpainter = remote_inpainter(remote, concurrency) if remote else None

    path = balance_dataset(
        BalanceSettings(
            manifest=manifest,
            model=model,
            normal_label=normal_label,
            lesion_label=lesion_label,
            count=count,
            out=out,
            seed=seed,
            steps=steps,
            strength=strength,
            eta=eta,
            resample=resample,
            guidance=guidance,
            batch_size=batch_size,
        ),
        inpainter=inpainter,
    )
    typer.echo(f"wrote {path}")


@app.command("grid")
@user_errors
def grid_cmd(
    manifest: ManifestOpt,
    model: Annotated[Path, typer.Option(help="Synthesizer folder.")],
    label: Annotated[str, typer.Option(help="Label of the source images (e.g. the normal class).")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    split: Annotated[str, typer.Option(help="Split to take the source images from.")] = "test",
    n_images: int = 4,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one column each.")] = "0,1,2",
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    eta: EtaOpt = None,
    resample: ResampleOpt = None,
    guidance: GuidanceOpt = None,
    reference_label: Annotated[
        str | None, typer.Option(help="Add a row of real images of this label.")
    ] = None,
) -> None:
    """Save a figure: source image, its mask, and the synthetic lesion for several seeds."""
    from models.evaluation.grid import synthesis_grid

    path = synthesis_grid(
        manifest,
        model,
        label,
        out,
        split=split,
        n_images=n_images,
        seeds=[int(s) for s in seeds.split(",")],
        sampler={
            "steps": steps,
            "strength": strength,
            "eta": eta,
            "resample": resample,
            "guidance": guidance,
        },
        reference_label=reference_label,
    )
    typer.echo(f"wrote {path}")


@app.command("train-classifier")
@user_errors
def train_classifier_cmd(
    manifest: ManifestOpt,
    positive_label: Annotated[str, typer.Option(help="Label of the positive (high-grade) class.")],
    out: Annotated[Path, typer.Option(help="Output model folder.")],
    arch: Annotated[str, typer.Option(help="resnet18, resnet34, resnet50 or resnet101.")] = "resnet50",
    image_size: int = 224,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better val AUC.")] = 10,
    balance: Annotated[
        str,
        typer.Option(
            help="none, oversample, weighted-loss, weighted-sampler, synthetic, synthetic+weighted."
        ),
    ] = "none",
    target_sensitivity: Annotated[
        float, typer.Option(help="The val threshold reaches this sensitivity.")
    ] = 0.9,
    seed: SeedOpt = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if present)")] = None,
) -> None:
    """Train the screening classifier on `train`, stop early and pick the threshold on `val`."""
    from models.classifier.config import ClassifierConfig
    from models.classifier.train import ClassifierTrainSettings, train_classifier

    card = train_classifier(
        ClassifierTrainSettings(
            manifest=manifest,
            positive_label=positive_label,
            out=out,
            config=ClassifierConfig(arch=arch, image_size=image_size),
            balance=balance,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            target_sensitivity=target_sensitivity,
            seed=seed,
            resume=resume,
            device=device,
        )
    )
    val = card["val"]
    typer.echo(
        f"wrote {out} (model version {card['model_version']}, val AUC {val['auc']:.3f}, threshold "
        f"{card['threshold']:.4f}: val sensitivity {val['sensitivity']:.3f}, specificity {val['specificity']:.3f})"
    )


@app.command("experiment")
@user_errors
def experiment_cmd(
    config: Annotated[Path, typer.Option(help="Experiment YAML (see experiments/).")],
    unit_index: Annotated[
        int | None, typer.Option(help="Run only unit N (strategy-major order), e.g. one Indexed Job pod.")
    ] = None,
    prepare_only: Annotated[bool, typer.Option(help="Only split, train the synthesizer, balance.")] = False,
    aggregate_only: Annotated[
        bool, typer.Option(help="Only aggregate finished units into the report.")
    ] = False,
) -> None:
    """Every balancing strategy x N seeds, evaluated on `test`: report.md, results.json, roc.png."""
    from models.experiment.config import load_config
    from models.experiment.prepare import prepare
    from models.experiment.runner import aggregate_units, run_experiment, run_units
    from models.experiment.units import all_units

    cfg = load_config(config)
    if unit_index is not None:
        units = all_units(cfg)
        if not 0 <= unit_index < len(units):
            raise LesionsynthError(f"--unit-index must be in [0, {len(units) - 1}] for this config")
        run_units(cfg, prepare(cfg).manifest, [units[unit_index]])
        typer.echo(f"unit {units[unit_index].name} done")
        return
    if prepare_only:
        prepared = prepare(cfg)
        typer.echo(f"prepared {prepared.manifest} ({prepared.synthetic_count} synthetic images)")
        return
    results = aggregate_units(cfg, prepare(cfg)) if aggregate_only else run_experiment(cfg)
    for name, s in results["strategies"].items():
        typer.echo(f"{name:20s} AUC {s['auc_mean']:.3f} +- {s['auc_sd']:.3f}")
    typer.echo(f"wrote {cfg.out / 'report.md'}")


@app.command("export-onnx")
@user_errors
def export_onnx_cmd(
    model: Annotated[Path, typer.Option(help="Classifier folder.")],
    out: Annotated[Path, typer.Option(help="Output .onnx file (its card goes to FILE.json).")],
) -> None:
    """Export the classifier to ONNX (dynamic batch), refused unless it matches torch within 1e-4."""
    from models.export.onnx import export_onnx

    card = export_onnx(model, out)
    typer.echo(f"wrote {out} (max |onnx - torch| = {card['parity_max_abs_diff']:.2e})")


@app.command("export-triton")
@user_errors
def export_triton_cmd(
    model: Annotated[Path, typer.Option(help="Classifier folder.")],
    repository: Annotated[Path, typer.Option(help="Triton model repository folder.")] = Path("models/triton"),
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "lesion_classifier",
    instance_kind: Annotated[str, typer.Option(help="gpu (production) or cpu.")] = "gpu",
    max_batch_size: int = 32,
) -> None:
    """Write a Triton repository: NAME/config.pbtxt (onnxruntime, dynamic batching) + NAME/1/model.onnx."""
    from models.export.triton import export_triton

    path = export_triton(
        model, repository, name=name, instance_kind=instance_kind, max_batch_size=max_batch_size
    )
    typer.echo(f"wrote {path}")


@app.command("export-serving")
@user_errors
def export_serving_cmd(
    model: Annotated[Path, typer.Option(help="Classifier folder.")],
    out: Annotated[Path, typer.Option(help="Serving folder to write (model.onnx + card + triton/).")],
    instance_kind: Annotated[str, typer.Option(help="Triton instances: gpu (production) or cpu.")] = "gpu",
    store: Annotated[
        Path | None, typer.Option(help="Also publish it into this model store (kind classifier-onnx).")
    ] = None,
) -> None:
    """Write the classifier service's serving folder (ONNX + a Triton repository of the same graph)."""
    from models.export.serving import export_serving_folder

    card = export_serving_folder(model, out, instance_kind=instance_kind)
    typer.echo(f"wrote {out} (version {card['model_version']})")
    if store is not None:
        from models.store import ModelStore

        stored = ModelStore(store).publish("classifier-onnx", out)
        typer.echo(f"published classifier-onnx {stored.version} to {stored.path}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
