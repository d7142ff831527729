"""Balance a dataset: turn K normal ``train`` images into synthetic lesion images (paper 000, Results:
"300 normal images of the Cambodia data set were transformed ... leading to ... 334 high grade").

The output folder holds::

    manifest.csv              every original row (paths rewritten relative to this folder, synthetic=0)
                              + one row per synthetic image (label = lesion label, split = train,
                              synthetic=1, source_image, seed, model_version)
    synthetic/syn_00000.png   the synthetic images
    synthetic/syn_00000_mask.png  with --masks proposed|auto: the proposed mask the image was made with
                              (its row's mask_path; mask_source = proposed | own)
    balance.json              the settings of the run (a rerun with other settings is refused)
    acceptance.csv            with an acceptance filter: every candidate tried, its score and the decision
    acceptance.json           with an acceptance filter: candidates tried, accepted, rate, threshold

Rerunning resumes: the plan (which source image and seed make synthetic image i) is a pure function of
the manifest, count and seed, each image is written atomically, and images already on disk are skipped.
Only ``train`` rows are ever used as sources, and synthetic rows are always ``train``: nothing synthetic
leaks into validation or test.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models import review
from models.acceptance import AcceptanceFilter
from models.artifacts import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from models.audit import LOCAL, AuditEntry, AuditLog, open_audit_log
from models.balance_settings import BalanceSettings
from models.data.images import encode_png
from models.data.manifest import Manifest, Row, load_manifest
from models.diffusion.inpaint import LesionInpainter
from models.errors import ConfigError
from models.masks.sources import chooser_for
from models.progress import tqdm
from models.provenance import Provenance

log = logging.getLogger(__name__)

SYNTHETIC_COLUMNS = ("synthetic", "source_image", "seed", "model_version")


@dataclass(frozen=True)
class PlannedImage:
    index: int
    source: Row
    seed: int

    @property
    def file_name(self) -> str:
        return f"synthetic/syn_{self.index:05d}.png"


def plan(
    manifest: Manifest,
    normal_label: str,
    count: int,
    seed: int,
    source_roles: tuple[str, ...] | None = None,
) -> list[PlannedImage]:
    """Which normal train image and which seed make synthetic image i, for i < count.

    Sources are a seeded permutation of the normal train rows (of ``source_roles`` when given); past one
    pass (count > normals) the same images are reused with new seeds, which gives different lesions.
    """
    normals = manifest.rows_in("train", normal_label)
    if source_roles is not None:
        normals = [r for r in normals if r.fields.get("role") in source_roles]
    if not normals:
        where = f" of role {', '.join(source_roles)}" if source_roles else ""
        raise ConfigError(f"no 'train' rows{where} with label {normal_label!r} to turn into lesions")
    order = np.random.default_rng(seed).permutation(len(normals))
    if count > len(normals):
        log.warning(
            "count %d > %d normal train images: sources are reused with new seeds", count, len(normals)
        )
    return [
        PlannedImage(
            index=i,
            source=normals[order[i % len(normals)]],
            seed=int(np.random.default_rng([seed, i]).integers(0, 2**62)),
        )
        for i in range(count)
    ]


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def balanced_manifest_text(
    manifest: Manifest,
    planned: list[PlannedImage],
    out: Path,
    lesion_label: str,
    model_version: str,
    mode: str = "add",
    mask_files: dict[int, str] | None = None,
) -> str:
    """``mask_files``: {plan index: proposed mask path} under --masks proposed|auto (adds mask_source)."""
    columns = list(manifest.columns) + [c for c in SYNTHETIC_COLUMNS if c not in manifest.columns]
    if mask_files is not None and "mask_source" not in columns:
        columns.append("mask_source")
    if mode == "replace" and "converted" not in columns:
        columns.append("converted")
    converted = {p.source.number for p in planned}
    rows: list[Row] = []
    for row in manifest.rows:
        fields = dict(row.fields)
        fields["image_path"] = _relative(row.image_file, out)
        fields["mask_path"] = _relative(row.mask_file, out) if row.has_mask else ""
        if row.roi_file is not None:
            fields["roi_mask_path"] = _relative(row.roi_file, out)
        fields["synthetic"] = fields.get("synthetic") or "0"
        if mode == "replace":
            fields["converted"] = "1" if row.number in converted else "0"
        rows.append(Row(row.number, fields, out))
    for p in planned:
        # Extra columns of the source (e.g. a diagnosis of "nevus") would be wrong for a synthetic lesion,
        # so synthetic rows carry only what is known about them.
        fields = {
            "image_path": p.file_name,
            "mask_path": (mask_files or {}).get(p.index) or _relative(p.source.mask_file, out),
            "label": lesion_label,
            "split": "train",
            "synthetic": "1",
            "source_image": _relative(p.source.image_file, out),
            "seed": str(p.seed),
            "model_version": model_version,
        }
        if mask_files is not None:
            fields["mask_source"] = "proposed" if p.index in mask_files else "own"
        rows.append(Row(0, fields, out))
    return manifest.to_csv(columns=columns, rows=rows)


def _bar(s: BalanceSettings, done: int):
    return tqdm(total=s.count, initial=done, desc="balance", unit="img", disable=not s.progress)


def _synthesize(
    inpainter, chunk: list[PlannedImage], s: BalanceSettings, masks=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(synthetic image, its mask) of each planned image."""
    pairs = [masks.load(p) for p in chunk] if masks is not None else [p.source.load() for p in chunk]
    results = inpainter.inpaint_batch(
        [img for img, _ in pairs],
        [msk for _, msk in pairs],
        [p.seed for p in chunk],
        solver=s.solver,
        steps=s.steps,
        strength=s.strength,
        eta=s.eta,
        resample=s.resample,
        guidance=s.guidance,
    )
    return [(result, msk) for result, (_, msk) in zip(results, pairs, strict=True)]


class _Saver:
    """Writes a synthetic image with its provenance (PNG text chunks) and records it in the audit log
    (models/audit.py) when one is configured."""

    def __init__(self, out: Path, model_version: str, audit: AuditLog | None, source: str):
        self.out, self.model_version, self.audit, self.source = out, model_version, audit, source

    def __call__(self, p: PlannedImage, image: np.ndarray, mask: np.ndarray) -> None:
        image_sha = sha256_file(p.source.image_file)
        mask_path = p.source.fields.get("mask_path")
        if mask_path and p.source.mask_file.is_file():
            mask_sha = sha256_file(p.source.mask_file)
        else:  # a proposed mask: the hash of its PNG
            mask_sha = sha256_bytes(encode_png(mask.astype(np.uint8) * 255))
        png = encode_png(image, provenance=Provenance(self.model_version, p.seed, image_sha))
        output_sha = atomic_write_bytes(self.out / p.file_name, png)
        if self.audit is not None:
            self.audit.record(
                [
                    AuditEntry.new(
                        actor=LOCAL,
                        source=self.source,
                        model_version=self.model_version,
                        seed=p.seed,
                        image_sha256=image_sha,
                        mask_sha256=mask_sha,
                        output_sha256=output_sha,
                    )
                ]
            )


def _accepted(
    manifest: Manifest,
    inpainter,
    accept: AcceptanceFilter,
    s: BalanceSettings,
    out: Path,
    save: _Saver,
) -> list[PlannedImage]:
    """Make candidates in plan order (the first ``count`` are the unfiltered plan) until ``count`` pass the
    filter or ``count * max_tries`` were tried; every decision is kept in ``acceptance.csv`` (a rerun
    resumes from it), only accepted images are written. Returns the accepted candidates, in plan order."""
    candidates = plan(manifest, s.normal_label, s.count * s.max_tries, s.seed, s.source_roles)
    masks = chooser_for(manifest, s)
    masks.check(candidates)
    decisions = read_decisions(out / "acceptance.csv")
    accepted = [c for c in candidates if decisions.get(c.index, (0.0, False))[1]]
    pending = [c for c in candidates if c.index not in decisions]
    with _bar(s, min(len(accepted), s.count)) as bar:
        while len(accepted) < s.count and pending:
            chunk, pending = pending[: s.batch_size], pending[s.batch_size :]
            made = _synthesize(inpainter, chunk, s, masks)
            scores = accept.score([img for img, _ in made], [msk for _, msk in made])
            for c, (image, msk), score in zip(chunk, made, scores, strict=True):
                ok = bool(score >= accept.threshold)
                decisions[c.index] = (float(score), ok)
                if ok:
                    save(c, image, msk)
                    accepted.append(c)
            _write_decisions(out / "acceptance.csv", decisions)
            bar.update(min(len(accepted), s.count) - bar.n)
    kept = sorted(accepted, key=lambda c: c.index)[: s.count]
    summary = {
        "tried": len(decisions),
        "accepted": sum(ok for _, ok in decisions.values()),
        "kept": len(kept),
        "threshold": accept.threshold,
        "filter_version": accept.model_version,
        "filter_val_auc": accept.card.get("val_auc"),
    }
    summary["acceptance_rate"] = round(summary["accepted"] / max(summary["tried"], 1), 4)
    atomic_write_json(out / "acceptance.json", summary)
    if len(kept) < s.count:
        log.warning(
            "the acceptance filter passed %d of %d candidates: %d synthetic images, not %d",
            summary["accepted"],
            summary["tried"],
            len(kept),
            s.count,
        )
    return kept


def read_decisions(path: Path) -> dict[int, tuple[float, bool]]:
    """``acceptance.csv``: candidate index -> (the filter's score, accepted); empty before the first batch."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()[1:]
    return {int(i): (float(score), ok == "1") for i, score, ok in (line.split(",") for line in lines)}


def _write_decisions(path: Path, decisions: dict[int, tuple[float, bool]]) -> None:
    rows = [f"{i},{score:.6f},{int(ok)}" for i, (score, ok) in sorted(decisions.items())]
    atomic_write_bytes(path, ("candidate,score,accepted\n" + "\n".join(rows) + "\n").encode())


def balance_dataset(
    s: BalanceSettings,
    inpainter: LesionInpainter | None = None,
    *,
    audit_source: str = "cli",
    audit_default: Path | None = None,
) -> Path:
    """Run (or resume) a balancing; return the path of the new manifest.

    Every synthetic PNG carries its provenance; each is recorded in the audit log named by
    ``LESIONSYNTH_AUDIT_DB`` (else ``audit_default``; neither: no log) as ``audit_source``.

    ``inpainter``: anything with ``model_version`` and ``inpaint_batch`` (e.g. the synthesis service's
    ``services.client.remote_inpainter.RemoteInpainter``); default: ``s.model`` loaded in this process.
    """
    # The sampler settings and the seed were checked when ``s`` was built (BalanceSettings.__post_init__).
    manifest = load_manifest(s.manifest, progress=s.progress)
    manifest.require_label(s.normal_label)
    if inpainter is None:
        if s.model is None:
            raise ConfigError("--model is required (or --remote URL of a synthesis service)")
        inpainter = LesionInpainter.from_pretrained(s.model, batch_size=s.batch_size)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() == Path(s.manifest).resolve().parent:
        raise ConfigError("--out must be a new folder, not the folder of the input manifest")

    # What makes two runs the same: the data and model by content (sha256, version), not by path, so a
    # moved folder still resumes; batch size and progress do not change any image.
    settings = {
        **{
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(s).items()
            if k not in ("progress", "batch_size", "out", "manifest", "model", "acceptance_filter")
            # new settings at their defaults are left out, so older runs still resume
            and not (
                k in ("source_roles", "mode", "masks", "guidance", "accept_threshold", "max_tries")
                and v == BalanceSettings.__dataclass_fields__[k].default
            )
        },
        "manifest_sha256": manifest.sha256(),
        "model_version": inpainter.model_version,
    }
    accept = None
    if s.acceptance_filter is not None:
        accept = AcceptanceFilter.load(s.acceptance_filter, s.accept_threshold)
        settings |= {
            "acceptance_filter": accept.model_version,
            "accept_threshold": s.accept_threshold,
            "max_tries": s.max_tries,
        }
    record = out / "balance.json"
    if record.exists():
        previous = json.loads(record.read_text())
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ConfigError(
                f"{out} holds a balance run with different {', '.join(changed)}; use a new --out folder"
            )
    else:
        atomic_write_json(record, settings)

    save = _Saver(out, inpainter.model_version, open_audit_log(audit_default), audit_source)
    if accept is None:
        planned = plan(manifest, s.normal_label, s.count, s.seed, s.source_roles)
        chooser_for(manifest, s).check(planned)
        todo = [p for p in planned if not (out / p.file_name).is_file()]
        if len(todo) < len(planned):
            log.info(
                "resuming: %d of %d synthetic images already done", len(planned) - len(todo), len(planned)
            )
        with _bar(s, len(planned) - len(todo)) as bar:
            for start in range(0, len(todo), s.batch_size):
                chunk = todo[start : start + s.batch_size]
                for p, (result, msk) in zip(
                    chunk, _synthesize(inpainter, chunk, s, chooser_for(manifest, s)), strict=True
                ):
                    save(p, result, msk)
                bar.update(len(chunk))
    else:
        planned = _accepted(manifest, inpainter, accept, s, out, save)

    mask_files = chooser_for(manifest, s).save_masks(planned, out) if s.masks != "own" else None
    target = out / "manifest.csv"
    text = balanced_manifest_text(
        manifest, planned, out, s.lesion_label, inpainter.model_version, s.mode, mask_files
    )
    # A rerun keeps a person's review of the same images (models/review.py).
    atomic_write_bytes(target, review.carry_over(target, text).encode())
    return target
