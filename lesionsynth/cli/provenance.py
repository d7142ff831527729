"""`lesionsynth provenance FILE`: is this image synthetic, what made it, and where the audit log saw it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import app, user_errors


@app.command("provenance")
@user_errors
def provenance_cmd(
    file: Annotated[Path, typer.Argument(help="A PNG (or DICOM) image.")],
    audit_db: Annotated[
        Path | None,
        typer.Option(help="Audit log to search (default: LESIONSYNTH_AUDIT_DB, else runs/audit.sqlite)."),
    ] = None,
) -> None:
    """Print FILE's synthetic provenance (PNG text chunks / DICOM tags) and its audit-log entries (found
    by the sha256 of its bytes). Exit status 0 either way; "no provenance" means lesionsynth did not mark it."""
    from models.artifacts import sha256_file
    from models.audit import FILE_NAME, AuditLog, audit_path
    from models.errors import InvalidImageError
    from models.provenance import read_provenance

    if not file.is_file():
        raise InvalidImageError("FILE: file not found")
    digest = sha256_file(file)
    found = read_provenance(file)
    typer.echo(f"sha256: {digest}")
    if found is None:
        typer.echo("provenance: none (no lesionsynth synthetic marks)")
    else:
        typer.echo("synthetic: true")
        typer.echo(f"model_version: {found.model_version}")
        typer.echo(f"seed: {found.seed}")
        typer.echo(f"source_sha256: {found.source_sha256}")
    path = audit_db or audit_path(Path("runs") / FILE_NAME)
    if path is None or not path.is_file():
        typer.echo(f"audit log: not found ({path})")
        return
    entries = AuditLog(path).find(digest)
    typer.echo(f"audit log: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        typer.echo(
            f"  {e.time} actor={e.actor} source={e.source} model_version={e.model_version} seed={e.seed} "
            f"image_sha256={e.image_sha256} mask_sha256={e.mask_sha256 or '-'}"
        )
