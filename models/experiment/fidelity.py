"""The experiment's fidelity step (paper 001): are the synthetic lesions clinically like lesions?

Features come from the ``none`` classifier of the first seed: trained here on real images only, so it
knows what separates the real classes and has never seen a synthetic image. Real references are the
held-out (val + test) images, which the synthesizer never saw; the training lesions, which it learned
from, are drawn in the t-SNE map for context.
"""

from __future__ import annotations

from pathlib import Path

from models.artifacts import atomic_write_bytes
from models.classifier.folder import load_classifier
from models.data.images import decode_image
from models.data.manifest import Row, load_manifest
from models.evaluation.fidelity import classifier_features, fidelity_scores, tsne_figure
from models.experiment.config import ExperimentConfig
from models.experiment.units import Unit


def _images(rows: list[Row]):
    return [decode_image(r.image_file, role=f"row {r.number} image") for r in rows]


def fidelity_step(
    config: ExperimentConfig, manifest: Path, tsne_name: str | None = "tsne.png"
) -> dict | None:
    """KID of synthetic lesions vs each real class (+ a t-SNE map named ``tsne_name`` in the output
    folder); None when the manifest holds no synthetic rows."""
    rows = load_manifest(manifest, check_files=False).rows
    synthetic = [r for r in rows if r.fields.get("synthetic") == "1"]
    if not synthetic:
        return None
    held_out = [r for r in rows if r.split in ("val", "test") and r.fields.get("synthetic", "0") != "1"]
    real_lesion = [r for r in held_out if r.label == config.positive_label]
    real_normal = [r for r in held_out if r.label == config.normal_label]
    train_lesion = [
        r
        for r in rows
        if r.split == "train" and r.label == config.positive_label and r.fields.get("synthetic", "0") != "1"
    ]
    model = load_classifier(Unit("none", config.seeds[0]).folder(config.out) / "classifier")
    feats = {
        name: classifier_features(model, _images(group))
        for name, group in (
            ("synthetic lesion", synthetic),
            ("held-out real lesion", real_lesion),
            ("held-out real normal", real_normal),
            ("train real lesion", train_lesion),
        )
    }
    scores = fidelity_scores(
        feats["synthetic lesion"], feats["held-out real lesion"], feats["held-out real normal"]
    )
    scores["features"] = (
        f"penultimate layer of the 'none' classifier, seed {config.seeds[0]} ({model.config.arch})"
    )
    if tsne_name:
        atomic_write_bytes(config.out / tsne_name, tsne_figure(feats, f"t-SNE of {scores['features']}"))
    return scores
