"""Which mask each planned synthetic image uses in ``balance`` (``--masks own | proposed | auto``).

- ``own``: the source row's mask (the default; a row without one is an error naming it);
- ``proposed``: a proposal (models/masks/propose.py) from the synthesizer's shape bank, seeded by the
  synthetic image's seed, inside the row's ``roi_mask_path`` when it has one;
- ``auto``: the row's own mask when it has one, else a proposal.

The bank: the synthesizer folder's (``shape_bank.json``, written by train-synthesizer), else one built
from the manifest's lesion ``train`` masks. A proposal is a pure function of (image, bank, ROI, seed), so a
resumed run proposes the same masks; the proposed mask is saved beside its synthetic image
(``synthetic/syn_00000_mask.png``) and named in the balanced manifest (``mask_source`` = proposed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from models.data.images import decode_image, decode_mask, encode_png
from models.errors import ConfigError
from models.masks.bank import ShapeBank, bank_from_manifest, find_bank, load_bank
from models.masks.propose import ProposalError, propose_mask

log = logging.getLogger(__name__)

MASK_MODES = ("own", "proposed", "auto")


def mask_file_name(index: int) -> str:
    return f"synthetic/syn_{index:05d}_mask.png"


class MaskChooser:
    """Gives each planned image (``index``, ``source`` row, ``seed``) its (image, mask)."""

    def __init__(self, mode: str, manifest, lesion_label: str, model: Path | None = None):
        self.mode = mode
        self._manifest, self._label, self._model = manifest, lesion_label, model
        self._bank: ShapeBank | None = None

    def proposes(self, row) -> bool:
        return self.mode == "proposed" or (self.mode == "auto" and not row.has_mask)

    @property
    def bank(self) -> ShapeBank:
        if self._bank is None:
            meta = find_bank(self._model) if self._model is not None else None
            if meta is not None:
                self._bank = load_bank(meta)
            else:
                log.info("the synthesizer has no shape bank: building one from the manifest's lesion masks")
                self._bank = bank_from_manifest(self._manifest, self._label)
        return self._bank

    def check(self, planned) -> None:
        """Before any work: ``own`` needs every source's mask; a proposal needs a bank."""
        if self.mode == "own":
            self._manifest.require_masks(
                [p.source for p in planned],
                "give those rows masks, or let balance propose them (--masks proposed or auto)",
            )
        elif any(self.proposes(p.source) for p in planned):
            _ = self.bank

    def load(self, p) -> tuple[np.ndarray, np.ndarray]:
        if not self.proposes(p.source):
            return p.source.load()
        row = p.source
        image = decode_image(row.image_file, role=f"row {row.number} image")
        roi = None
        if row.roi_file is not None:
            roi = decode_mask(row.roi_file, role=f"row {row.number} roi mask")
        try:
            return image, propose_mask(image, self.bank, p.seed, roi)
        except ProposalError as exc:
            raise ConfigError(f"row {row.number}: {exc}") from None

    def save_masks(self, planned, out: Path) -> dict[int, str]:
        """Write each proposed mask not yet on disk; return {index: its path relative to ``out``}."""
        from models.artifacts import atomic_write_bytes

        names = {}
        for p in planned:
            if not self.proposes(p.source):
                continue
            name = mask_file_name(p.index)
            if not (out / name).is_file():
                _, mask = self.load(p)
                atomic_write_bytes(out / name, encode_png(mask.astype(np.uint8) * 255))
            names[p.index] = name
        return names


_last: tuple | None = None


def chooser_for(manifest, s) -> MaskChooser:
    """The chooser of one balance run (``s``: BalanceSettings), built once per (manifest, settings): the
    bank is loaded or built once however many batches ask."""
    global _last
    key = (id(manifest), s.masks, s.lesion_label, str(s.model))
    if _last is None or _last[0] != key:
        _last = (key, MaskChooser(s.masks, manifest, s.lesion_label, s.model))
    return _last[1]
