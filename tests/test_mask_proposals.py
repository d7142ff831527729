"""Mask proposals (issue 13, part 1): shapes from the lesion class's train masks, placed in tissue.

The images here have what defeated a naive proposal on colonoscopy and dermoscopy frames: a black frame
border, a dark circular vignette and a bright specular glare spot. Every test can fail: a proposal in the
border, on the glare, cut by the image edge or outside the class's size range is caught.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import ManifestError
from models.masks import ProposalError, allowed_area, load_bank, propose_mask, tissue_mask
from models.masks.bank import build_bank, find_bank

SIDE = 160
CENTRE = (SIDE - 1) / 2
RADIUS = 62  # the imaged disc; outside it the vignette goes to black
FRAME = 10  # black frame border
GLARE = (60, 95, 9)  # (row, col, radius) of the specular highlight


def frame_image(seed: int = 0) -> np.ndarray:
    """Pink textured tissue in a disc, a soft dark vignette, a black frame and a white glare spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - CENTRE, xx - CENTRE)
    tissue = np.stack([190 + 0 * r, 120 + 0 * r, 110 + 0 * r], axis=-1) + rng.normal(0, 12, (SIDE, SIDE, 3))
    fade = np.clip((RADIUS + 6 - r) / 12, 0, 1)[..., None]  # vignette: to black over 12 px
    image = tissue * fade
    gy, gx, gr = GLARE
    image[np.hypot(yy - gy, xx - gx) <= gr] = 250
    image[:FRAME], image[-FRAME:], image[:, :FRAME], image[:, -FRAME:] = 0, 0, 0, 0
    return np.clip(image, 0, 255).astype(np.uint8)


def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


@pytest.fixture(scope="module")
def bank():
    """Ellipse lesions of 6-14% of the image side (sqrt of the area fraction)."""
    rng = np.random.default_rng(1)
    masks = []
    for _ in range(30):
        ry, rx = rng.uniform(6, 14), rng.uniform(6, 14)
        masks.append(ellipse(128, 128, 64, 64, ry, rx))
    return build_bank(masks, "lesion")


def disc(margin: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    return np.hypot(yy - CENTRE, xx - CENTRE) <= RADIUS - margin


def test_tissue_rule_excludes_border_vignette_and_glare():
    image = frame_image()
    tissue = tissue_mask(image)
    assert not tissue[:FRAME].any() and not tissue[:, -FRAME:].any()
    assert not tissue[~disc(-4)].any()  # nothing past the vignette
    gy, gx, _ = GLARE
    assert not tissue[gy, gx]
    assert tissue[disc(8)].mean() > 0.9  # the lit disc is tissue (but for the glare)


def test_proposals_lie_in_tissue_within_the_size_range(bank):
    image = frame_image()
    gy, gx, gr = GLARE
    yy, xx = np.mgrid[:SIDE, :SIDE]
    near_glare = np.hypot(yy - gy, xx - gx) <= gr + 2
    lo, hi = bank.size_range
    for seed in range(12):
        mask = propose_mask(image, bank, seed)
        assert mask.shape == (SIDE, SIDE) and mask.dtype == bool and mask.any()
        assert not (mask & ~disc(2)).any(), f"seed {seed}: mask outside the lit disc (vignette/frame)"
        assert not (mask & near_glare).any(), f"seed {seed}: mask on the specular glare"
        border = np.ones_like(mask)
        border[1:-1, 1:-1] = False
        assert not (mask & border).any()
        size = np.sqrt(mask.sum() / mask.size)
        assert 0.8 * lo <= size <= 1.2 * hi, f"seed {seed}: size {size:.3f} outside {lo:.3f}-{hi:.3f}"
        assert mask[image.max(axis=2) < 20].sum() == 0  # never on a black pixel


def test_deterministic_per_seed_and_different_across_seeds(bank):
    image = frame_image()
    a, b = propose_mask(image, bank, 7), propose_mask(image, bank, 7)
    assert np.array_equal(a, b)
    masks = [propose_mask(image, bank, s) for s in range(6)]
    assert len({m.tobytes() for m in masks}) == 6


def test_roi_is_respected(bank):
    image = frame_image()
    roi = ellipse(SIDE, SIDE, 110, 60, 30, 30)
    for seed in range(6):
        mask = propose_mask(image, bank, seed, roi=roi)
        assert not (mask & ~roi).any()
    assert allowed_area(image, roi).sum() < roi.sum()  # eroded: a margin inside the ROI's edge


def test_no_placement_says_why(bank):
    dark = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    with pytest.raises(ProposalError, match="no place for a lesion"):
        propose_mask(dark, bank, 0)
    tiny_roi = ellipse(SIDE, SIDE, 80, 80, 6, 6)
    with pytest.raises(ProposalError, match="no placement fits|no place"):
        propose_mask(frame_image(), bank, 0, roi=tiny_roi)


def test_bank_round_trip_and_sha_check(tmp_path, bank):
    meta = bank.save(tmp_path / "bank")
    loaded = load_bank(tmp_path / "bank")
    assert np.array_equal(loaded.shapes, bank.shapes) and loaded.size_range == pytest.approx(bank.size_range)
    assert find_bank(tmp_path / "bank") == meta
    file_bank = bank.save(tmp_path / "other" / "lesions.safetensors")
    assert load_bank(file_bank).size_range == pytest.approx(bank.size_range)
    tensors = tmp_path / "bank" / "shape_bank.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    from models.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="sha256"):
        load_bank(tmp_path / "bank")


def test_synthesizer_folder_carries_its_bank(tiny_synth):
    from models.diffusion.inpaint import LesionInpainter

    bank = load_bank(tiny_synth)
    assert len(bank) > 0 and bank.lesion_label == "lesion"
    LesionInpainter.from_pretrained(tiny_synth, device="cpu", verify=True)  # the card hashes the bank


def without_normal_masks(demo_manifest: Path, out: Path) -> Path:
    """A copy of the demo manifest (in ``out``) whose normal rows have no mask_path."""
    out.mkdir(parents=True, exist_ok=True)
    with demo_manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for column in ("image_path", "mask_path"):
            if row[column]:
                row[column] = os.path.relpath(demo_manifest.parent / row[column], out)
        if row["label"] == "normal":
            row["mask_path"] = ""
    path = out / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_balance_cli_proposes_masks_for_rows_without_one(tmp_path, demo_manifest, tiny_synth):
    from typer.testing import CliRunner

    from lesionsynth.cli import app
    from models.data.manifest import load_manifest

    manifest = without_normal_masks(demo_manifest, tmp_path / "data")
    load_manifest(manifest)  # empty mask_path on normal rows is valid
    common = ["balance", "--manifest", manifest, "--model", tiny_synth, "--normal-label", "normal"]
    common += ["--lesion-label", "lesion", "--count", 3, "--batch-size", 3, "--no-progress"]
    runner = CliRunner()
    own = runner.invoke(app, [str(a) for a in [*common, "--out", tmp_path / "own"]])
    assert (
        own.exit_code == 2 and "no mask" in own.output and "--masks proposed" in " ".join(own.output.split())
    )

    out = tmp_path / "balanced"
    result = runner.invoke(app, [str(a) for a in [*common, "--masks", "proposed", "--out", out]])
    assert result.exit_code == 0, result.output
    balanced = load_manifest(out / "manifest.csv")
    synthetic = [r for r in balanced.rows if r.fields["synthetic"] == "1"]
    bank = load_bank(tiny_synth)
    assert len(synthetic) == 3
    for row in synthetic:
        assert row.fields["mask_source"] == "proposed"
        assert row.fields["mask_path"].startswith("synthetic/syn_") and row.fields["mask_path"].endswith(
            "_mask.png"
        )
        image, mask = row.load()
        source = np.asarray(Image.open(out / row.fields["source_image"]).convert("RGB"))
        assert mask.any() and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        size = np.sqrt(mask.mean())
        assert 0.7 * bank.size_range[0] <= size <= 1.3 * bank.size_range[1]
        assert (image[mask] != source[mask]).any()  # painted inside the proposal
    normals = [r for r in balanced.rows if r.label == "normal"]
    assert all(r.fields["mask_path"] == "" for r in normals)
    # resumable, and the same proposals again
    before = {r.fields["mask_path"]: (out / r.fields["mask_path"]).read_bytes() for r in synthetic}
    again = runner.invoke(app, [str(a) for a in [*common, "--masks", "proposed", "--out", out]])
    assert again.exit_code == 0, again.output
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_lesion_rows_still_need_masks(tmp_path, demo_manifest):
    from models.data.manifest import load_manifest

    manifest = without_normal_masks(demo_manifest, tmp_path / "data")
    text = manifest.read_text().splitlines()
    header = text[0].split(",")
    lesion = next(
        i for i, line in enumerate(text[1:], 1) if line.split(",")[header.index("label")] == "lesion"
    )
    fields = text[lesion].split(",")
    fields[header.index("mask_path")] = ""
    text[lesion] = ",".join(fields)
    manifest.write_text("\n".join(text) + "\n")
    m = load_manifest(manifest)
    with pytest.raises(ManifestError, match=f"rows {lesion + 1} have no mask \\(empty"):
        m.require_masks([r for r in m.rows if r.label == "lesion"], "the synthesizer learns from them")


def test_auto_uses_own_masks_and_proposes_inside_the_roi(tmp_path, demo_manifest, tiny_synth):
    """--masks auto: rows with a mask keep it; rows without get a proposal inside their roi_mask_path; an
    older synthesizer (no bank in its folder: here a model given as an inpainter only) gets the bank
    built from the manifest's lesion train masks."""
    from models.balance import BalanceSettings, balance_dataset
    from models.data.images import encode_png
    from models.data.manifest import load_manifest
    from models.diffusion.inpaint import LesionInpainter

    data = tmp_path / "data"
    manifest = without_normal_masks(demo_manifest, data)
    rows = list(csv.DictReader(manifest.open()))
    roi = np.zeros((48, 48), np.uint8)
    roi[2:46, 2:42] = 255  # all but a strip on the right (demo lesions are large: ~half the side)
    (data / "roi.png").write_bytes(encode_png(roi))
    kept = 0
    for row in rows:
        row["roi_mask_path"] = "roi.png" if row["label"] == "normal" else ""
    own = next(r for r in rows if r["label"] == "lesion")["mask_path"]
    for row in rows:
        if row["label"] == "normal" and kept < 2:
            row["mask_path"], kept = own, kept + 1  # two normals keep a (lesion's) mask as a drawn one
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "auto"
    s = BalanceSettings(
        manifest=manifest,
        model=None,
        normal_label="normal",
        lesion_label="lesion",
        count=6,
        out=out,
        batch_size=6,
        progress=False,
        masks="auto",
        steps=2,
    )
    balance_dataset(s, LesionInpainter.from_pretrained(tiny_synth, device="cpu"))
    balanced = load_manifest(out / "manifest.csv")
    synthetic = [r for r in balanced.rows if r.fields["synthetic"] == "1"]
    assert {r.fields["mask_source"] for r in synthetic} <= {"own", "proposed"}
    for row in synthetic:
        source = next(r for r in balanced.rows if r.fields["image_path"] == row.fields["source_image"])
        if source.has_mask:
            assert (
                row.fields["mask_source"] == "own" and row.fields["mask_path"] == source.fields["mask_path"]
            )
        else:
            assert row.fields["mask_source"] == "proposed"
            _, mask = row.load()
            assert not (mask & (roi == 0)).any()  # inside the row's region of interest
    assert any(r.fields["mask_source"] == "proposed" for r in synthetic)
    assert all(r.fields["roi_mask_path"] for r in balanced.rows if r.label == "normal")
    assert json.loads((out / "balance.json").read_text())["masks"] == "auto"


def test_masks_is_a_job_parameter_and_an_experiment_key(tmp_path, demo_manifest):
    from conftest import experiment_yaml

    from models.balance import BalanceSettings
    from models.errors import ParameterError
    from models.experiment.config import load_config
    from models.jobs.params import fields_of

    assert "masks" in fields_of(BalanceSettings)
    config = load_config(experiment_yaml(tmp_path, demo_manifest, balance={"count": 2, "masks": "proposed"}))
    assert config.balance["masks"] == "proposed"
    with pytest.raises(ParameterError, match="masks must be one of own, proposed, auto"):
        load_config(experiment_yaml(tmp_path, demo_manifest, balance={"masks": "drawn"}))


def test_service_bank_from_the_folder_else_the_setting_else_a_clear_error(
    tmp_path, tiny_synth, demo_manifest
):
    """The synthesis handler (in process): a synthesizer folder from before banks has none; proposals
    then use LESIONSYNTH_SHAPE_BANK, and without it the error says how to make one."""
    import shutil

    from models.data.manifest import load_manifest
    from models.errors import ModelFolderError
    from models.masks import bank_from_manifest
    from services.common.settings import CommonSettings
    from services.synthesis.handler import ProposalTask, SynthesisHandler
    from services.synthesis.settings import SynthesisSettings

    old = tmp_path / "old-synth"
    shutil.copytree(tiny_synth, old, ignore=shutil.ignore_patterns("checkpoints", "shape_bank.*"))
    card = json.loads((old / "model_card.json").read_text())
    card["files"] = {k: v for k, v in card["files"].items() if not k.startswith("shape_bank")}
    (old / "model_card.json").write_text(json.dumps(card))
    bank_dir = tmp_path / "bank"
    bank_from_manifest(load_manifest(demo_manifest), "lesion").save(bank_dir)
    image, _ = load_manifest(demo_manifest).rows_in("train", "normal")[0].load()

    def handler(shape_bank):
        return SynthesisHandler(
            SynthesisSettings(
                common=CommonSettings.from_env(default_grpc_port=0, default_request_timeout_s=60.0),
                model=str(old),
                model_store=str(tmp_path / "store"),
                device="cpu",
                unet_batch_size=4,
                max_batch_size=2,
                max_latency_ms=10,
                reload_interval_s=0.0,
                shape_bank=shape_bank,
            )
        )

    without = handler(None)
    try:
        with pytest.raises(
            ModelFolderError, match="no shape bank.*lesionsynth masks bank.*LESIONSYNTH_SHAPE_BANK"
        ):
            without.propose(ProposalTask(image, 3, None))
    finally:
        without.close()
    fallback = handler(str(bank_dir))
    try:
        mask = fallback.propose(ProposalTask(image, 3, None))
        assert mask.any() and np.array_equal(mask, propose_mask(image, load_bank(bank_dir), 3))
    finally:
        fallback.close()
