"""What the benchmarks share: the recorded PH2 split, a synthesizer to measure, held-out crop sets, reports."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from models.artifacts import atomic_write_json, atomic_write_text
from models.data.demo import write_demo_dataset
from models.data.manifest import load_manifest
from models.data.split import add_split
from models.diffusion.crops import LesionCrops
from models.diffusion.train import TrainSettings, train_synthesizer

REPO = Path(__file__).resolve().parents[2]
PH2_MANIFEST = REPO.parent / "shared" / "data" / "ph2" / "manifest_128.csv"
#: The PH2 split every figure in docs/ uses (recorded in docs/evidence/ph2_split.csv).
PH2_SPLIT = dict(test_fraction=0.25, val_fraction=0.1, seed=0)
#: The PH2 synthesizer behind the docs figures: 64 px, "small" UNet (3.1 M parameters), 3000 steps of 8.
PH2_SYNTH = dict(resolution=64, preset="small", max_steps=3000, batch_size=8, checkpoint_every=500, seed=0)


def ph2_split_manifest(runs: Path = REPO / "runs" / "ph2") -> Path:
    """runs/ph2/manifest.csv: the shared PH2 manifest with the recorded split (made once)."""
    target = runs / "manifest.csv"
    if not target.is_file():
        manifest = load_manifest(PH2_MANIFEST)
        add_split(manifest, **PH2_SPLIT)
        manifest.save(target)
    return target


PH2_NAME = "PH2 (Mendonca et al., EMBC 2013), 128 px"


def ph2_synthesizer(mask_conditioning: bool) -> Path:
    """runs/ph2/synth-{uncond,cond}: the docs' PH2 synthesizers, trained (or resumed) when missing."""
    model = REPO / "runs" / "ph2" / ("synth-cond" if mask_conditioning else "synth-uncond")
    if not (model / "model_card.json").is_file():
        train_synthesizer(
            TrainSettings(
                manifest=ph2_split_manifest(),
                lesion_label="lesion",
                out=model,
                mask_conditioning=mask_conditioning,
                resume=True,
                **PH2_SYNTH,
            )
        )
    return model


def bootstrap_synthesizer(manifest: Path | None, model: Path | None) -> tuple[Path, Path, str]:
    """(manifest, model folder, data name) to benchmark; trains what is missing."""
    if model is not None:
        if manifest is None:
            if not PH2_MANIFEST.is_file():
                raise SystemExit("--model given without --manifest and no PH2 data to default to")
            manifest = ph2_split_manifest()
        return manifest, model, manifest.parent.name
    if PH2_MANIFEST.is_file():
        return ph2_split_manifest(), ph2_synthesizer(mask_conditioning=False), PH2_NAME
    demo = REPO / "runs" / "bench-demo"
    manifest = demo / "data" / "manifest.csv"
    if not manifest.is_file():
        loaded = load_manifest(write_demo_dataset(demo / "data", size=64))
        add_split(loaded, test_fraction=0.25, val_fraction=0.1, seed=0)
        loaded.save()
    model = demo / "synth"
    if not (model / "model_card.json").is_file():
        train_synthesizer(
            TrainSettings(
                manifest=manifest,
                lesion_label="lesion",
                out=model,
                resume=True,
                resolution=32,
                preset="tiny",
                max_steps=300,
            )
        )
    return manifest, model, "demo data (synthetic, non-medical; PH2 absent)"


@dataclass
class HeldOutSets:
    """Region crops (N, 3, R, R) in [-1, 1] and masks (N, 1, R, R)."""

    normal_images: torch.Tensor  # held-out (val + test) normal crops: what gets painted
    normal_masks: torch.Tensor
    lesion_images: torch.Tensor  # held-out real lesion crops: the KID reference
    lesion_masks: torch.Tensor
    train_lesion_images: torch.Tensor
    train_crops: torch.Tensor  # train crops of both classes, for the feature classifier
    train_labels: torch.Tensor  # 1 = lesion


def held_out_sets(manifest_path: Path, lesion_label: str, resolution: int, margin: float) -> HeldOutSets:
    manifest = load_manifest(manifest_path)
    held = [r for r in manifest.rows if r.split in ("val", "test")]
    train = manifest.rows_in("train")

    def crops(rows):
        return LesionCrops.from_rows(rows, resolution, margin)

    normal = crops([r for r in held if r.label != lesion_label])
    lesion = crops([r for r in held if r.label == lesion_label])
    train_lesion = crops([r for r in train if r.label == lesion_label])
    train_normal = crops([r for r in train if r.label != lesion_label])
    return HeldOutSets(
        normal_images=normal.images,
        normal_masks=normal.masks,
        lesion_images=lesion.images,
        lesion_masks=lesion.masks,
        train_lesion_images=train_lesion.images,
        train_crops=torch.cat([train_lesion.images, train_normal.images]),
        train_labels=torch.cat(
            [
                torch.ones(len(train_lesion), dtype=torch.long),
                torch.zeros(len(train_normal), dtype=torch.long),
            ]
        ),
    )


def round_ratios(numerators: list[float], denominators: list[float]) -> tuple[list[float], float]:
    """Per-round ratios of two interleaved series and their median (the figure the docs quote: these
    machines are noisy, so each round compares two runs made seconds apart and the median drops outliers).
    """
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return [round(x, 3) for x in ratios], round(statistics.median(ratios), 3)


def write_report(out_dir: Path, name: str, result: dict, markdown: str) -> None:
    atomic_write_json(out_dir / f"{name}.json", result)
    atomic_write_text(out_dir / f"{name}.md", markdown)
    print(f"wrote {out_dir / name}.json and .md")
