"""Job ``train-classifier``: train the screening classifier, then publish it to the model store.

Like ``train-synthesizer``: the recipe runs in ``work_dir/model`` with ``resume=True`` (continuing after
the last finished epoch); the recipe deletes its checkpoints when it finishes, and the scheduler deletes
the work folder once the job succeeded.
"""

from __future__ import annotations

from pathlib import Path

from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots

# The choices of models.classifier.config / models.classifier.balancing (not imported: they pull in torch).
# tests/test_jobs.py checks they match.
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
STRATEGIES = ("none", "oversample", "weighted-loss", "weighted-sampler", "synthetic", "synthetic+weighted")

FIELDS = {
    "manifest": p.input_file(),
    "positive_label": p.label(),
    "arch": p.choice(ARCHS, "resnet50"),
    "image_size": p.integer(32, 1024, 224),
    "balance": p.choice(STRATEGIES, "none"),
    "epochs": p.integer(1, 10_000, 30),
    "batch_size": p.integer(1, 1024, 32),
    "learning_rate": p.number(0.0, 1.0, 1e-3, lo_open=True),
    "weight_decay": p.number(0.0, 1.0, 1e-4),
    "patience": p.integer(1, 10_000, 10),
    "target_sensitivity": p.number(0.0, 1.0, 0.9, lo_open=True),
    "seed": p.seed(),
    "device": p.device(),
}


def validate(params: dict, roots: JobRoots) -> dict:
    return p.normalise(params, FIELDS, roots)


def run(params: dict, ctx: JobContext) -> dict:
    from models.checkpoints import latest_checkpoint
    from models.classifier.config import ClassifierConfig
    from models.classifier.train import ClassifierTrainSettings, train_classifier

    out = Path(ctx.work_dir) / "model"
    ckpt = latest_checkpoint(out / "checkpoints")
    card = train_classifier(
        ClassifierTrainSettings(
            manifest=Path(params["manifest"]),
            positive_label=params["positive_label"],
            out=out,
            config=ClassifierConfig(arch=params["arch"], image_size=params["image_size"]),
            balance=params["balance"],
            epochs=params["epochs"],
            batch_size=params["batch_size"],
            learning_rate=params["learning_rate"],
            weight_decay=params["weight_decay"],
            patience=params["patience"],
            target_sensitivity=params["target_sensitivity"],
            seed=params["seed"],
            device=params["device"],
            resume=True,
            progress=False,
        )
    )
    stored = ctx.store.publish("classifier", out)
    return {
        "kind": "classifier",
        "version": stored.version,
        "path": str(stored.path),
        "val_auc": card["val"]["auc"],
        "threshold": card["threshold"],
        "epochs_run": card["epochs_run"],
        "resumed_from_epoch": int(ckpt.name.split("-")[1]) if ckpt else 0,
    }
