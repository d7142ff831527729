"""Synthetic provenance carried inside every synthetic PNG (torch-free).

A synthetic image leaves lesionsynth (the services, the CLI ``synthesize`` and ``balance``) with PNG tEXt
chunks that say what it is, so it can never pass for a real photograph once it is copied out of its
folder::

    lesionsynth:synthetic       "true"
    lesionsynth:model_version   the synthesizer's version (its model card)
    lesionsynth:seed            the sampler seed
    lesionsynth:source_sha256   sha256 of the source image's bytes (the file or request body)
    Description                 a human sentence starting with "SYNTHETIC"

No file names and no patient data: the source is named by its hash only. ``lesionsynth provenance FILE``
reads them back (:func:`read_provenance`) and finds the file in the audit log (models/audit.py) by the
sha256 of its bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

PREFIX = "lesionsynth:"
KEY_SYNTHETIC = PREFIX + "synthetic"
KEY_MODEL_VERSION = PREFIX + "model_version"
KEY_SEED = PREFIX + "seed"
KEY_SOURCE_SHA256 = PREFIX + "source_sha256"
KEY_DESCRIPTION = "Description"


@dataclass(frozen=True)
class Provenance:
    """Where a synthetic image came from."""

    model_version: str
    seed: int
    source_sha256: str

    def description(self) -> str:
        return (
            f"SYNTHETIC image made by lesionsynth (model {self.model_version}, seed {self.seed}); "
            "not a real photograph: not for diagnosis"
        )

    def text_chunks(self) -> dict[str, str]:
        """The PNG tEXt chunks, key -> value (Latin-1 text, as PNG requires)."""
        return {
            KEY_SYNTHETIC: "true",
            KEY_MODEL_VERSION: self.model_version,
            KEY_SEED: str(int(self.seed)),
            KEY_SOURCE_SHA256: self.source_sha256,
            KEY_DESCRIPTION: self.description(),
        }

    def png_info(self):
        """A Pillow ``PngInfo`` holding :meth:`text_chunks` (what ``encode_png(provenance=...)`` saves)."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in self.text_chunks().items():
            info.add_text(key, value)
        return info


def png_text(data: bytes | Path) -> dict[str, str]:
    """Every tEXt/iTXt/zTXt chunk of a PNG (empty for other formats or an unreadable file)."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else Path(data)
    try:
        with Image.open(source, formats=("PNG",)) as img:
            img.load()  # text chunks after the image data are read only with it
            return {str(k): str(v) for k, v in getattr(img, "text", {}).items()}
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return {}


def read_provenance(data: bytes | Path) -> Provenance | None:
    """The provenance written by lesionsynth, or None when the file carries none (a real image). PNG: the
    text chunks; DICOM: the synthetic series' DerivationDescription (models/data/dicom.py)."""
    from models.data.dicom import dicom_provenance, is_dicom

    if is_dicom(data):
        return dicom_provenance(data)
    text = png_text(data)
    if text.get(KEY_SYNTHETIC) != "true":
        return None
    try:
        seed = int(text.get(KEY_SEED, ""))
    except ValueError:
        seed = -1  # a damaged chunk: still synthetic, seed unknown
    return Provenance(text.get(KEY_MODEL_VERSION, ""), seed, text.get(KEY_SOURCE_SHA256, ""))
