"""Mask proposals (issue 13, part 1): where a synthetic lesion may go when a row has no mask.

Torch-free (numpy + Pillow), so the synthesis service and the CLI use it without loading torch:

- :mod:`models.masks.bank`: the shape bank, the lesion class's train masks as binary shapes plus the
  size range observed for the class relative to the image (safetensors + JSON, sha256-checked);
- :mod:`models.masks.tissue`: the area a lesion may occupy (the region-of-interest mask, else the imaged
  tissue: not the dark vignette or frame border, not specular glare), eroded by a margin;
- :mod:`models.masks.propose`: :func:`propose_mask`, a bank shape rotated, flipped, scaled within the
  size range and placed inside that area, deterministic per seed.
"""

from models.masks.bank import BANK_FILES, ShapeBank, bank_from_manifest, find_bank, load_bank
from models.masks.propose import ProposalError, propose_mask
from models.masks.tissue import allowed_area, tissue_mask

__all__ = [
    "BANK_FILES",
    "ProposalError",
    "ShapeBank",
    "allowed_area",
    "bank_from_manifest",
    "find_bank",
    "load_bank",
    "propose_mask",
    "tissue_mask",
]
