"""Is the synthesizer's region as fine as the classifier sees it? (issue 11, variant 3)

The synthesizer paints a lesion region at ``resolution`` px (the mask's square box with its margin,
:mod:`models.data.regions`), which is resized to the box's size in the image and pasted; the classifier
then resizes the whole image to ``image_size`` x ``image_size``. A region whose box spans more classifier
pixels than ``resolution`` is shown to the classifier upsampled (blurred); one that spans fewer loses
nothing to the synthesizer's resolution. This measures, over the masks of the chosen rows,

    classifier px of the region = box side x image_size / min(H, W)      (the larger of the two axis scales)
    upsampling = classifier px / resolution                              (> 1: coarser than the classifier)

for each (classifier size, synthesizer resolution) pair, so the resolution can be chosen by measurement::

    python -m models.experiment.region_scale --manifest ../shared/data/isic2017/manifest_256.csv \\
        --roles docs/evidence/isic2017_split.csv:pool,donor --sizes 96,224 --resolutions 64,128 \\
        --out docs/evidence/region_scale

Geometry only: it reads masks, never labels or pixels of val/test images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from models.artifacts import atomic_write_json, atomic_write_text
from models.data.manifest import load_manifest
from models.data.regions import DEFAULT_MARGIN, region_box
from models.data.roles import read_role_file


def region_sides(masks, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """(N,) side of each mask's square region as a fraction of the image's shorter side."""
    return np.array([min(region_box(m, margin).side, *m.shape) / min(m.shape) for m in masks])


def upsampling_table(fractions: np.ndarray, sizes, resolutions) -> list[dict]:
    """Per (classifier size S, synthesizer resolution R): median and 90th percentile of S * fraction / R,
    and the share of regions the classifier sees at more pixels than the synthesizer made."""
    rows = []
    for size in sizes:
        for resolution in resolutions:
            factor = fractions * size / resolution
            rows.append(
                {
                    "classifier_px": size,
                    "resolution": resolution,
                    "median_region_px": round(float(np.median(fractions * size)), 1),
                    "median_upsampling": round(float(np.median(factor)), 3),
                    "p90_upsampling": round(float(np.percentile(factor, 90)), 3),
                    "share_upsampled": round(float((factor > 1).mean()), 3),
                }
            )
    return rows


def markdown(table: list[dict], n: int, command: str) -> str:
    lines = [
        "# Region scale: the synthesizer's region resolution against the classifier's input",
        "",
        f"{n} masks. Upsampling > 1 means the classifier sees the painted region at more pixels than the",
        "synthesizer made it (it is shown blurred); <= 1 means the resolution loses nothing the classifier sees.",
        "",
        "| classifier px | synthesizer px | median region (classifier px) | median upsampling | p90 upsampling | share upsampled |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['classifier_px']} | {r['resolution']} | {r['median_region_px']} | {r['median_upsampling']} "
            f"| {r['p90_upsampling']} | {r['share_upsampled']:.1%} |"
        )
    return "\n".join(lines + ["", f"Command: `{command}`", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--roles", help="ROLE_FILE:role1,role2 -- only these roles' rows")
    parser.add_argument("--sizes", default="96,224")
    parser.add_argument("--resolutions", default="64,128")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    rows = load_manifest(args.manifest, check_files=False).rows
    if args.roles:
        file, names = args.roles.split(":")
        entries = read_role_file(Path(file)).entries
        wanted = {e["image_path"] for e in entries if e["role"] in names.split(",")}
        rows = [r for r in rows if r.fields["image_path"] in wanted]
    masks = (r.load()[1] for r in rows)
    fractions = region_sides(masks)
    table = upsampling_table(
        fractions, [int(v) for v in args.sizes.split(",")], [int(v) for v in args.resolutions.split(",")]
    )
    command = "python -m models.experiment.region_scale " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    atomic_write_json(
        args.out.with_suffix(".json"), {"n": len(fractions), "table": table, "command": command}
    )
    atomic_write_text(args.out.with_suffix(".md"), markdown(table, len(fractions), command))
    print(markdown(table, len(fractions), command))


if __name__ == "__main__":
    main()
