"""``lesionsynth data``: check, split, draw roles, demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import ManifestOpt, SeedOpt, data_app, user_errors
from models.errors import LesionsynthError


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
