"""``lesionsynth dicomweb``: a hospital pipeline's ends around ``balance`` (lesionsynth/dicomweb.py).

``fetch`` reads a study from a PACS into a folder with a manifest; ``store-synthetic`` stores a balanced
folder's synthetic images back into their study as a new series (with SEG masks). A bearer token for the
PACS is read from ``LESIONSYNTH_DICOMWEB_TOKEN`` (never a command-line argument: it would show in ps).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import ManifestOpt, app, user_errors

dicomweb_app = typer.Typer(no_args_is_help=True, help="DICOMweb: fetch a study, store synthetic series back.")
app.add_typer(dicomweb_app, name="dicomweb")
UrlOpt = Annotated[str, typer.Option(help="DICOMweb root, e.g. http://pacs:8042/dicom-web.")]
TOKEN_ENV = "LESIONSYNTH_DICOMWEB_TOKEN"


def _client(url: str):
    from lesionsynth.dicomweb import DicomWebClient

    return DicomWebClient(url, token=os.environ.get(TOKEN_ENV) or None)


@dicomweb_app.command("fetch")
@user_errors
def fetch_cmd(
    url: UrlOpt,
    study: Annotated[str, typer.Option(help="StudyInstanceUID.")],
    out: Annotated[Path, typer.Option(help="Folder for the instances and manifest.csv.")],
    label_keyword: Annotated[
        str, typer.Option(help="DICOM keyword holding each image's label (e.g. ImageComments).")
    ],
    split: Annotated[str, typer.Option(help="The manifest's split for every row.")] = "train",
) -> None:
    """Download a study (WADO-RS) and write a manifest: one row per image that a SEG in the study
    references (the SEG is its mask), labelled by LABEL_KEYWORD."""
    from lesionsynth.dicomweb import download_study, write_manifest

    with _client(url) as client:
        instances = download_study(client, study, out)
    path = write_manifest(instances, out, lambda ds: str(ds.get(label_keyword, "")), split)
    typer.echo(f"wrote {path} ({len(instances)} instances)")


@dicomweb_app.command("store-synthetic")
@user_errors
def store_synthetic_cmd(url: UrlOpt, manifest: ManifestOpt) -> None:
    """Store a balanced folder's synthetic images (DICOM sources only) back into their study (STOW-RS):
    one new series marked SYNTHETIC, and their masks as SEG."""
    from lesionsynth.dicomweb import synthetic_series

    instances = synthetic_series(manifest)
    with _client(url) as client:
        client.store(instances)
    typer.echo(f"stored {len(instances)} instances")
