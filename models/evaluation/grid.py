"""A figure a person looks at: source image | its mask | the synthetic lesion for several seeds."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.artifacts import atomic_write_bytes
from models.data.manifest import load_manifest
from models.diffusion.inpaint import LesionInpainter
from models.errors import ConfigError


def synthesis_grid(
    manifest_path: Path,
    model: Path,
    label: str,
    out: Path,
    *,
    split: str = "test",
    n_images: int = 4,
    seeds: Sequence[int] = (0, 1, 2),
    sampler: dict | None = None,
    title: str | None = None,
    reference_label: str | None = None,
) -> Path:
    """Rows: source images of ``label`` from ``split``; columns: image, mask outline, one synthetic per
    seed. With ``reference_label``, a last row shows real images of that label for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = load_manifest(manifest_path)
    rows = manifest.rows_in(split, label)[:n_images]
    if not rows:
        raise ConfigError(f"no {split!r} rows with label {label!r}")
    inpainter = LesionInpainter.from_pretrained(model)
    settings = inpainter.defaults.with_overrides(**(sampler or {}))
    pairs = [r.load() for r in rows]
    cols = 2 + len(seeds)
    references = manifest.rows_in(split, reference_label)[:cols] if reference_label else []
    n_rows = len(rows) + (1 if references else 0)
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.0 * cols, 2.0 * n_rows), squeeze=False)
    for i, (image, mask) in enumerate(pairs):
        results = inpainter.inpaint_batch(
            [image] * len(seeds), [mask] * len(seeds), list(seeds), **settings.as_kwargs()
        )
        overlay = image.copy()
        edge = mask ^ np.roll(mask, 1, 0) | mask ^ np.roll(mask, 1, 1)
        overlay[edge] = (0, 255, 0)
        panels = [image, overlay] + results
        names = [f"{label} (row {rows[i].number})", "mask"] + [f"synthetic, seed {s}" for s in seeds]
        for j, (panel, name) in enumerate(zip(panels, names, strict=True)):
            axes[i, j].imshow(panel)
            axes[i, j].set_axis_off()
            if i == 0 or j == 0:
                axes[i, j].set_title(name, fontsize=8)
    for j in range(cols if references else 0):
        axes[-1, j].set_axis_off()
        if j < len(references):
            axes[-1, j].imshow(references[j].load()[0])
            axes[-1, j].set_title(f"real {reference_label} (row {references[j].number})", fontsize=8)
    card = inpainter.model.card
    kind = ""
    if inpainter.model.config.conditional:
        kind = f"class-conditional, guidance {settings.guidance:g}, "
    if "init_from" in card:
        kind += f"fine-tuned from {card['init_from']['model_version']}, "
    fig.suptitle(
        title
        or f"synthesizer {card['model_version']} ({kind}{card['steps']} steps, {card['resolution']}px), "
        f"{settings.steps} {settings.solver} steps, strength {settings.strength}, eta {settings.eta}, "
        f"resample {settings.resample}",
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)
