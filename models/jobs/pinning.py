"""Model references are pinned at a job's first run, so a resumed job uses the same model.

A job may say ``model: latest``. If the service restarts mid-job and a newer model was published in the
meantime, "latest" would now name another model, and a resumed balance would refuse to continue (its
record holds the first model's version) or, worse, mix two models' images. So the first run records the
exact folder and version in ``work_dir/inputs.json`` and every later run uses that record.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.artifacts import atomic_write_json
from models.errors import ModelFolderError
from models.jobs.base import JobContext
from models.store import StoredModel

PINS = "inputs.json"


def pinned_model(ctx: JobContext, kind: str, ref: str) -> StoredModel:
    """The model ``ref`` named at the job's first run."""
    record = Path(ctx.work_dir) / PINS
    pins = json.loads(record.read_text()) if record.is_file() else {}
    if kind in pins:
        pin = pins[kind]
        model = ctx.store.resolve(kind, pin["path"])
        if model.version != pin["version"]:
            raise ModelFolderError(
                f"the {kind} this job started with (version {pin['version']}) has changed on disk "
                f"(now {model.version}); submit a new job"
            )
        return model
    model = ctx.store.resolve(kind, ref)
    pins[kind] = {"ref": ref, "version": model.version, "path": str(model.path)}
    atomic_write_json(record, pins)
    return model
