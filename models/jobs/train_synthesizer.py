"""Job ``train-synthesizer``: train the lesion DDPM, then publish it to the model store.

Training runs in ``work_dir/model`` with ``resume=True``: the recipe continues from the newest checkpoint
there (or returns the finished model), so a job restarted after a crash picks up where it stopped. Once
the model is in the store its checkpoints are deleted; the store copy is the artifact.

``processes > 1`` trains data-parallel: the job runs the same recipe under ``torchrun`` with one process
per GPU (models/torchrun.py); ``batch_size`` is per process. On Kubernetes the job's pod asks for that
many GPUs (services/training/k8s/manifest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from models.diffusion.train_settings import TrainSettings
from models.errors import ParameterError
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots
from models.jobs.pinning import pinned_model

#: Every train-synthesizer parameter (models/diffusion/train_settings.py) but the output folder and the
#: run switches, which the job sets itself.
FIELDS = p.fields_of(TrainSettings)


def validate(params: dict, roots: JobRoots) -> dict:
    values = p.normalise(params, FIELDS, roots)
    if values["num_classes"] and not values["normal_label"]:
        raise ParameterError("params.normal_label is required when params.num_classes is 2")
    if values["num_classes"] and values["all_regions"]:
        raise ParameterError("params.all_regions is for unconditional pre-training (num_classes 0)")
    if values["processes"] > 1 and values["device"] not in (None, "cpu", "cuda"):
        raise ParameterError(
            f"device must be 'cuda', 'cpu' or unset when processes > 1 (one process per GPU, each on "
            f"cuda:LOCAL_RANK), got {values['device']!r}"
        )
    return values


def run(params: dict, ctx: JobContext) -> dict:
    from models.checkpoints import latest_checkpoint
    from models.diffusion.train import train_synthesizer

    out = Path(ctx.work_dir) / "model"
    ckpt = latest_checkpoint(out / "checkpoints")
    if params["init_from"] is not None:  # a store version or folder, pinned at the first run
        params = {**params, "init_from": str(pinned_model(ctx, "synthesizer", params["init_from"]).path)}
    if params["processes"] > 1:
        card = _train_data_parallel(params, out, ctx)
    else:
        card = train_synthesizer(_settings(params, out))
    stored = ctx.store.publish("synthesizer", out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    loss = card["loss_curve"][-1][1] if card.get("loss_curve") else None
    return {
        "kind": "synthesizer",
        "version": stored.version,
        "path": str(stored.path),
        "steps": card["steps"],
        "final_loss": loss,
        "resumed_from_step": int(ckpt.name.split("-")[1]) if ckpt else 0,
        "processes": params["processes"],
    }


def _settings(params: dict, out: Path) -> TrainSettings:
    return TrainSettings(**params, out=out, resume=True, progress=False)


def _train_data_parallel(params: dict, out: Path, ctx: JobContext) -> dict:
    """``_settings`` on ``processes`` torchrun ranks (models/jobs/synthesizer_ranks.py)."""
    from models.artifacts import atomic_write_json
    from models.diffusion.folder import read_card
    from models.torchrun import run_data_parallel

    params_file = Path(ctx.work_dir) / "params.json"
    atomic_write_json(params_file, params)
    run_data_parallel(
        params["processes"],
        ["--params", str(params_file), "--out", str(out)],
        Path(ctx.work_dir) / "progress.json",
        module="models.jobs.synthesizer_ranks",
    )
    return read_card(out)
