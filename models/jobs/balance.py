"""Job ``balance``: paint synthetic lesions into normal train images; write a balanced manifest.

The synthesizer is a model store reference (pinned at the first run, see pinning.py). Output goes to
``output_root/<job_id>/`` (manifest.csv, synthetic/, balance.json); :func:`models.balance.balance_dataset`
skips images already written, so a restarted job continues.
"""

from __future__ import annotations

from models.balance_settings import BalanceSettings
from models.errors import ParameterError
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots
from models.jobs.pinning import pinned_model

#: Every balance parameter (models/balance_settings.py) but the output folder; the synthesizer is a model
#: store reference here (pinned at the first run), the latest by default.
FIELDS = p.fields_of(BalanceSettings, model=p.model_ref("latest"))


def validate(params: dict, roots: JobRoots) -> dict:
    values = p.normalise(params, FIELDS, roots)
    if values["normal_label"] == values["lesion_label"]:
        raise ParameterError("params.lesion_label must differ from params.normal_label")
    return values


def run(params: dict, ctx: JobContext) -> dict:
    from models.audit import default_beside
    from models.balance import balance_dataset

    model = pinned_model(ctx, "synthesizer", params["model"])
    out = ctx.output_dir
    manifest = balance_dataset(
        BalanceSettings(**{**params, "model": model.path}, out=out, progress=False),
        audit_source="balance-job",
        audit_default=default_beside(ctx.store.root),  # LESIONSYNTH_AUDIT_DB wins (models/audit.py)
    )
    return {
        "manifest": str(manifest),
        "out": str(out),
        "count": params["count"],
        "synthesizer_version": model.version,
    }
