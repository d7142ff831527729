"""The recipe commands: train-synthesizer, synthesize, balance, grid, train-classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import (
    ManifestOpt,
    RemoteOpt,
    SeedOpt,
    app,
    remote_inpainter,
    user_errors,
    with_settings,
)
from models.balance_settings import BalanceSettings
from models.classifier.train_settings import ClassifierTrainSettings
from models.diffusion.sampler_settings import SamplerSettings
from models.diffusion.train_settings import TrainSettings


@app.command("train-synthesizer")
@user_errors
@with_settings(TrainSettings)
def train_synthesizer_cmd(
    settings: dict,
    snapshot_steps: Annotated[
        str | None, typer.Option(help="Comma-separated steps to also save as OUT/snapshots/step-N/ models.")
    ] = None,
    progress_file: Annotated[
        Path | None, typer.Option(hidden=True, help="Also keep the current bar in this JSON file (rank 0).")
    ] = None,
) -> None:
    """Train the DDPM on the masked lesion regions of the `train` lesion images (paper 000).

    Data-parallel on N GPUs: `torchrun --nproc-per-node N -m lesionsynth.cli train-synthesizer ... --device cuda`
    (--batch-size is per process). Paper 002's recipe in two runs: `--all-regions` (every region,
    unconditional), then `--init-from` that folder on the lesion regions."""
    from models.diffusion.train import train_synthesizer
    from models.distributed import DataParallel

    if progress_file is not None and DataParallel.from_env().is_main:
        from models.progress import JsonFileSink, set_sink

        set_sink(JsonFileSink(progress_file))
    steps = tuple(int(v) for v in snapshot_steps.split(",")) if snapshot_steps else ()
    card = train_synthesizer(TrainSettings(**settings, snapshot_steps=steps))
    if not DataParallel.from_env().is_main:
        return  # rank 0 reports
    last = card["loss_curve"][-1][1] if card["loss_curve"] else float("nan")
    out = settings["out"]
    typer.echo(f"wrote {out} (model version {card['model_version']}, {card['steps']} steps, loss {last:.4f})")


@app.command("synthesize")
@user_errors
@with_settings(SamplerSettings, unset=True, into="sampler")
def synthesize_cmd(
    image: Annotated[Path, typer.Option(help="Input image.")],
    mask: Annotated[Path, typer.Option(help="Mask: > 127 marks where to paint the lesion.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    model: Annotated[Path | None, typer.Option(help="Synthesizer folder (or use --remote).")] = None,
    remote: RemoteOpt = None,
    seed: SeedOpt = 0,
    sampler: dict | None = None,
) -> None:
    """Paint a synthetic lesion into the masked region of one image (here, or on a synthesis service)."""
    from models.artifacts import atomic_write_bytes
    from models.data.images import decode_image, decode_mask, encode_png
    from models.errors import ConfigError

    img = decode_image(image, role="image")
    msk = decode_mask(mask, role="mask")
    settings = dict(seed=seed, **sampler)
    if remote:
        result = remote_inpainter(remote).inpaint(img, msk, **settings)
    elif model is None:
        raise ConfigError("give --model FOLDER or --remote URL")
    else:
        from models.diffusion.inpaint import LesionInpainter

        result = LesionInpainter.from_pretrained(model).inpaint(img, msk, **settings)
    atomic_write_bytes(out, encode_png(result))
    typer.echo(f"wrote {out}")


@app.command("balance")
@user_errors
@with_settings(BalanceSettings)
def balance_cmd(
    settings: dict,
    remote: RemoteOpt = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight with --remote.")] = 4,
) -> None:
    """Turn COUNT normal train images into synthetic lesions; write the balanced manifest (resumable)."""
    from models.balance import balance_dataset

    inpainter = remote_inpainter(remote, concurrency) if remote else None
    path = balance_dataset(BalanceSettings(**settings), inpainter=inpainter)
    typer.echo(f"wrote {path}")


@app.command("grid")
@user_errors
@with_settings(SamplerSettings, unset=True, into="sampler")
def grid_cmd(
    manifest: ManifestOpt,
    model: Annotated[Path, typer.Option(help="Synthesizer folder.")],
    label: Annotated[str, typer.Option(help="Label of the source images (e.g. the normal class).")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    split: Annotated[str, typer.Option(help="Split to take the source images from.")] = "test",
    n_images: int = 4,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one column each.")] = "0,1,2",
    sampler: dict | None = None,
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
        sampler=sampler,
        reference_label=reference_label,
    )
    typer.echo(f"wrote {path}")


@app.command("train-classifier")
@user_errors
@with_settings(ClassifierTrainSettings)
def train_classifier_cmd(settings: dict) -> None:
    """Train the screening classifier on `train`, stop early and pick the threshold on `val`."""
    from models.classifier.train import train_classifier

    card = train_classifier(ClassifierTrainSettings(**settings))
    val = card["val"]
    typer.echo(
        f"wrote {settings['out']} (model version {card['model_version']}, val AUC {val['auc']:.3f}, "
        f"threshold {card['threshold']:.4f}: val sensitivity {val['sensitivity']:.3f}, "
        f"specificity {val['specificity']:.3f})"
    )
