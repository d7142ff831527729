"""Job ``balance``: paint synthetic lesions into normal train images; write a balanced manifest.

The synthesizer is a model store reference (pinned at the first run, see pinning.py). Output goes to
``output_root/<job_id>/`` (manifest.csv, synthetic/, balance.json); :func:`models.balance.balance_dataset`
skips images already written, so a restarted job continues.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import ParameterError
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots
from models.jobs.pinning import pinned_model

# The sampler's limits (models.diffusion.inpaint; not imported: it pulls in torch). Checked by a test.
MAX_STEPS = 200
MAX_RESAMPLE = 10

FIELDS = {
    "manifest": p.input_file(),
    "model": p.model_ref("latest"),
    "normal_label": p.label(),
    "lesion_label": p.label(),
    "count": p.integer(1, 1_000_000),
    "seed": p.seed(),
    "steps": p.integer(1, MAX_STEPS, None),
    "strength": p.number(0.0, 1.0, None, lo_open=True),
    "eta": p.number(0.0, 1.0, None),
    "resample": p.integer(1, MAX_RESAMPLE, None),
    "batch_size": p.integer(1, 256, 8),
}


def validate(params: dict, roots: JobRoots) -> dict:
    values = p.normalise(params, FIELDS, roots)
    if values["normal_label"] == values["lesion_label"]:
        raise ParameterError("params.lesion_label must differ from params.normal_label")
    return values


def run(params: dict, ctx: JobContext) -> dict:
    from models.balance import BalanceSettings, balance_dataset

    model = pinned_model(ctx, "synthesizer", params["model"])
    out = ctx.output_dir
    manifest = balance_dataset(
        BalanceSettings(
            manifest=Path(params["manifest"]),
            model=model.path,
            normal_label=params["normal_label"],
            lesion_label=params["lesion_label"],
            count=params["count"],
            out=out,
            seed=params["seed"],
            steps=params["steps"],
            strength=params["strength"],
            eta=params["eta"],
            resample=params["resample"],
            batch_size=params["batch_size"],
            progress=False,
        )
    )
    return {
        "manifest": str(manifest),
        "out": str(out),
        "count": params["count"],
        "synthesizer_version": model.version,
    }
