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
    out: Annotated[Path, typer.Option(help="Output PNG, or DICOM (.dcm; its mask as OUT.seg.dcm).")],
    model: Annotated[Path | None, typer.Option(help="Synthesizer folder (or use --remote).")] = None,
    remote: RemoteOpt = None,
    seed: SeedOpt = 0,
    out_format: Annotated[
        str | None,
        typer.Option("--format", help="png or dicom (default: dicom when --out ends in .dcm, else png)."),
    ] = None,
    sampler: dict | None = None,
) -> None:
    """Paint a synthetic lesion into the masked region of one image (here, or on a synthesis service).

    Inputs may be PNG, JPEG, ... or DICOM. DICOM out (a DICOM source only): a new Secondary Capture series
    in the source's study marked SYNTHETIC, and the mask as a DICOM SEG beside it (OUT.seg.dcm)."""
    from models.artifacts import atomic_write_bytes, sha256_file
    from models.audit import LOCAL, AuditEntry, open_audit_log
    from models.data import dicom
    from models.data.images import decode_image, decode_mask, encode_png
    from models.errors import ConfigError
    from models.provenance import Provenance

    out_format = out_format or ("dicom" if out.suffix.lower() == ".dcm" else "png")
    if out_format not in ("png", "dicom"):
        raise ConfigError(f"--format must be png or dicom, got {out_format!r}")
    if out_format == "dicom" and not dicom.is_dicom(image):
        raise ConfigError("DICOM output needs a DICOM source image (the new series joins its study)")
    img = decode_image(image, role="image")
    msk = decode_mask(mask, role="mask")
    settings = dict(seed=seed, **sampler)
    if remote:
        inpainter = remote_inpainter(remote)
    elif model is None:
        raise ConfigError("give --model FOLDER or --remote URL")
    else:
        from models.diffusion.inpaint import LesionInpainter

        inpainter = LesionInpainter.from_pretrained(model)
    result = inpainter.inpaint(img, msk, **settings)
    source_sha = sha256_file(image)
    if out_format == "dicom":
        source = dicom.read_dataset(image)
        made = dicom.write_synthetic_dicom(
            source, result, inpainter.model_version, seed, source_sha256=source_sha
        )
        digest = atomic_write_bytes(out, dicom.dataset_bytes(made))
        seg = dicom.write_mask_seg(made, msk, inpainter.model_version, seed)
        atomic_write_bytes(out.with_name(out.stem + ".seg.dcm"), dicom.dataset_bytes(seg))
    else:
        provenance = Provenance(inpainter.model_version, seed, source_sha)
        digest = atomic_write_bytes(out, encode_png(result, provenance=provenance))
    audit = open_audit_log()  # only when LESIONSYNTH_AUDIT_DB is set
    if audit is not None:
        entry = dict(actor=LOCAL, source="cli", model_version=inpainter.model_version, seed=seed)
        hashes = dict(image_sha256=source_sha, mask_sha256=sha256_file(mask), output_sha256=digest)
        audit.record([AuditEntry.new(**entry, **hashes)])
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
