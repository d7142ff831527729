"""Job ``train-classifier``: train the screening classifier, then publish it to the model store.

Like ``train-synthesizer``: the recipe runs in ``work_dir/model`` with ``resume=True`` (continuing after
the last finished epoch); the recipe deletes its checkpoints when it finishes, and the scheduler deletes
the work folder once the job succeeded.
"""

from __future__ import annotations

from pathlib import Path

from models.classifier.train_settings import ClassifierTrainSettings
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots

#: Every train-classifier parameter (models/classifier/train_settings.py) but the output folder and the
#: run switches, which the job sets itself.
FIELDS = p.fields_of(ClassifierTrainSettings)


def validate(params: dict, roots: JobRoots) -> dict:
    return p.normalise(params, FIELDS, roots)


def run(params: dict, ctx: JobContext) -> dict:
    from models.checkpoints import latest_checkpoint
    from models.classifier.train import train_classifier

    out = Path(ctx.work_dir) / "model"
    ckpt = latest_checkpoint(out / "checkpoints")
    card = train_classifier(ClassifierTrainSettings(**params, out=out, resume=True, progress=False))
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
