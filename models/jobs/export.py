"""Job ``export``: turn a stored classifier into the serving folder (ONNX + Triton repository) and publish
it as a ``classifier-onnx`` model, which the classifier service loads.

The export itself is refused unless ONNX Runtime reproduces torch (models/export/onnx.py). It is quick and
rewrites ``work_dir/serving`` from scratch, so a restarted job simply runs again.
"""

from __future__ import annotations

from pathlib import Path

from models.export.serving import TRITON_NAME
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots
from models.jobs.pinning import pinned_model

FIELDS = {
    "model": p.model_ref("latest"),
    "triton_name": p.text(r"[A-Za-z0-9_-]{1,64}", TRITON_NAME, what="1-64 of A-Z a-z 0-9 _ -"),
    "instance_kind": p.choice(("gpu", "cpu"), "gpu"),
    "max_batch_size": p.integer(1, 1024, 32),
}


def validate(params: dict, roots: JobRoots) -> dict:
    return p.normalise(params, FIELDS, roots)


def run(params: dict, ctx: JobContext) -> dict:
    from models.export.serving import export_serving_folder

    source = pinned_model(ctx, "classifier", params["model"])
    out = Path(ctx.work_dir) / "serving"
    card = export_serving_folder(
        source.path,
        out,
        triton_name=params["triton_name"],
        instance_kind=params["instance_kind"],
        max_batch_size=params["max_batch_size"],
    )
    stored = ctx.store.publish("classifier-onnx", out)
    return {
        "kind": "classifier-onnx",
        "version": stored.version,
        "path": str(stored.path),
        "source_model_version": card["source_model_version"],
    }
