"""``lesionsynth masks``: build a shape bank, propose a mask for one image (models/masks/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import ManifestOpt, SeedOpt, app, user_errors

masks_app = typer.Typer(no_args_is_help=True, help="Mask proposals: shape banks and proposed masks.")
app.add_typer(masks_app, name="masks")


@masks_app.command("bank")
@user_errors
def masks_bank(
    manifest: ManifestOpt,
    lesion_label: Annotated[str, typer.Option(help="The lesion class whose train masks make the bank.")],
    out: Annotated[
        Path, typer.Option(help="A folder (e.g. a synthesizer folder without a bank) or a .safetensors file.")
    ],
) -> None:
    """A shape bank from the lesion class's train masks (shapes + size range), for older synthesizers
    and other datasets; `balance --masks proposed` and the synthesis service read it."""
    from models.data.manifest import load_manifest
    from models.masks.bank import bank_from_manifest

    bank = bank_from_manifest(load_manifest(manifest, progress=True), lesion_label)
    meta = bank.save(out)
    lo, hi = bank.size_range
    typer.echo(f"wrote {meta}: {len(bank)} shapes, sizes {lo:.3f}-{hi:.3f} of the image side")


@masks_app.command("propose")
@user_errors
def masks_propose(
    image: Annotated[Path, typer.Option(help="The image (PNG, JPEG, ...).")],
    bank: Annotated[Path, typer.Option(help="A shape bank: a synthesizer folder, a bank folder or file.")],
    out: Annotated[Path, typer.Option(help="Where to write the mask PNG (0/255).")],
    seed: SeedOpt = 0,
    roi: Annotated[
        Path | None, typer.Option(help="Region-of-interest mask: the proposal lies inside.")
    ] = None,
) -> None:
    """Propose a lesion mask for one image: a bank shape placed in tissue (or inside --roi)."""
    import numpy as np

    from models.artifacts import atomic_write_bytes
    from models.data.images import decode_image, decode_mask, encode_png
    from models.masks import load_bank, propose_mask

    img = decode_image(image, role="image")
    region = decode_mask(roi, role="roi mask") if roi is not None else None
    mask = propose_mask(img, load_bank(bank), seed, region)
    atomic_write_bytes(out, encode_png(mask.astype(np.uint8) * 255))
    typer.echo(f"wrote {out}")
