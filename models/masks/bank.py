"""The shape bank: real lesion mask shapes of one class, and the size range of that class's lesions.

Built from the lesion class's ``train`` masks (never val/test): each mask's region (of masks not cut by
the image border, unless all are) is cropped to its bounding box, padded to a square (so the aspect ratio survives), resized to ``side`` px and thresholded;
each mask's size relative to its image, ``sqrt(mask area / image area)``, is kept, and the class's size
range is the 5th-95th percentile of those sizes.

Saved as ``shape_bank.safetensors`` (the ``shapes`` uint8 tensor N x side x side, and ``sizes`` float32)
plus ``shape_bank.json`` (kind, format, label, size range, the manifest's sha256 and the safetensors
file's sha256), both written atomically; loading checks the sha256. No pickle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from models.errors import ConfigError, ModelFolderError

KIND = "lesionsynth.shape_bank"
FORMAT_VERSION = 1
TENSORS = "shape_bank.safetensors"
META = "shape_bank.json"
#: The bank's files inside a folder (a synthesizer folder carries them beside its weights).
BANK_FILES = (TENSORS, META)
SIDE = 64
PERCENTILES = (5.0, 95.0)
HINT = "build one with `lesionsynth masks bank --manifest M --lesion-label L --out FOLDER`"


@dataclass(frozen=True)
class ShapeBank:
    #: (N, side, side) bool: each mask's bounding-box region, padded square, resized.
    shapes: np.ndarray
    #: (M,) float: sqrt(mask area / image area) of every mask (M >= N: masks cut by the border give sizes,
    #: not shapes).
    sizes: np.ndarray
    #: (lo, hi): the class's size range (the PERCENTILES of ``sizes``).
    size_range: tuple[float, float]
    lesion_label: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.shapes.shape[0])

    def save(self, out: str | Path) -> Path:
        """Write into folder ``out`` (or as ``out`` when it ends in .safetensors, JSON beside it);
        return the JSON path. Each file atomically; the JSON, which holds the tensors' sha256, last."""
        from safetensors.numpy import save

        tensors, meta = bank_paths(out)
        tensors.parent.mkdir(parents=True, exist_ok=True)
        data = save(
            {
                "shapes": np.ascontiguousarray(self.shapes.astype(np.uint8)),
                "sizes": np.ascontiguousarray(self.sizes.astype(np.float32)),
            }
        )
        digest = atomic_write_bytes(tensors, data)
        record = {
            **self.info,
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "lesion_label": self.lesion_label,
            "count": len(self),
            "side": int(self.shapes.shape[1]),
            "size_range": [float(self.size_range[0]), float(self.size_range[1])],
            "size_percentiles": list(PERCENTILES),
            "tensors": tensors.name,
            "tensors_sha256": digest,
        }
        atomic_write_json(meta, record)
        return meta


def bank_paths(path: str | Path) -> tuple[Path, Path]:
    """(tensors, json) paths for a folder or a ``*.safetensors`` / ``*.json`` file name."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / TENSORS, path / META


def find_bank(folder: str | Path) -> Path | None:
    """The bank's JSON inside ``folder`` (a synthesizer folder), or None when it has none."""
    meta = Path(folder) / META
    return meta if meta.is_file() else None


def load_bank(path: str | Path) -> ShapeBank:
    """Load and sha256-check a bank (a folder, or its .safetensors / .json file)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors, meta = bank_paths(path)
    if not meta.is_file() or not tensors.is_file():
        raise ModelFolderError(f"no shape bank at {Path(path).name} ({HINT})")
    try:
        record = json.loads(meta.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{meta.name} is not valid JSON") from exc
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise ModelFolderError(f"{meta.name} is not a lesionsynth shape bank")
    if record.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"shape bank format {record.get('format_version')}; this reads {FORMAT_VERSION}"
        )
    if sha256_file(tensors) != record.get("tensors_sha256"):
        raise ModelFolderError(
            f"{tensors.name} fails its sha256 check (corrupted or modified); refusing to load"
        )
    try:
        arrays = load_file(str(tensors))
    except SafetensorError as exc:
        raise ModelFolderError(f"{tensors.name} is not a valid safetensors file") from exc
    shapes, sizes = arrays["shapes"].astype(bool), arrays["sizes"].astype(np.float64)
    lo, hi = record["size_range"]
    return ShapeBank(shapes, sizes, (float(lo), float(hi)), record.get("lesion_label", ""), record)


def mask_shape(mask: np.ndarray, side: int = SIDE) -> np.ndarray:
    """The mask's bounding-box region, padded to a centred square, resized to ``side`` px (bool)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    n = max(h, w)
    square = np.zeros((n, n), dtype=np.uint8)
    square[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = crop * 255
    resized = Image.fromarray(square).resize((side, side), Image.Resampling.BILINEAR)
    out = np.asarray(resized) > 127
    if not out.any():  # a one-pixel mask: keep its centre
        out[side // 2, side // 2] = True
    return out


def build_bank(
    masks: Iterable[np.ndarray], lesion_label: str = "", side: int = SIDE, info: dict | None = None
) -> ShapeBank:
    """A bank from (H, W) bool masks (empty masks are skipped). Every mask counts for the size range;
    the shapes are those of masks that do not touch the image border (a lesion cut by the border has a
    straight edge no lesion has), unless every mask does."""
    shapes, cut, sizes = [], [], []
    for mask in masks:
        if not mask.any():
            continue
        touches = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        (cut if touches else shapes).append(mask_shape(mask, side))
        sizes.append(float(np.sqrt(mask.sum() / mask.size)))
    if not sizes:
        raise ConfigError("no lesion masks to build a shape bank from")
    shapes = shapes or cut
    sizes_arr = np.asarray(sizes)
    lo, hi = np.percentile(sizes_arr, PERCENTILES)
    return ShapeBank(np.stack(shapes), sizes_arr, (float(lo), float(hi)), lesion_label, dict(info or {}))


def bank_from_rows(rows, lesion_label: str, info: dict | None = None) -> ShapeBank:
    """A bank from manifest rows (their masks; every row must have one)."""
    from models.data.images import decode_mask

    masks = []
    for row in rows:
        if not row.fields.get("mask_path", "").strip():
            raise ConfigError(
                f"row {row.number} (label {lesion_label!r}) has no mask: the lesion class's train rows need "
                "their masks to build a shape bank"
            )
        masks.append(decode_mask(row.mask_file, role=f"row {row.number} mask"))
    return build_bank(masks, lesion_label, info=info)


def bank_from_manifest(manifest, lesion_label: str) -> ShapeBank:
    """The bank of ``lesion_label``'s ``train`` rows of a loaded manifest (val/test are never read)."""
    manifest.require_label(lesion_label)
    rows = manifest.rows_in("train", lesion_label)
    if not rows:
        raise ConfigError(f"no 'train' rows with label {lesion_label!r} to build a shape bank from")
    return bank_from_rows(rows, lesion_label, {"manifest_sha256": manifest.sha256()})
