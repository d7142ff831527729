"""Job ``train-synthesizer``: train the lesion DDPM, then publish it to the model store.

Training runs in ``work_dir/model`` with ``resume=True``: the recipe continues from the newest checkpoint
there (or returns the finished model), so a job restarted after a crash picks up where it stopped. Once
the model is in the store its checkpoints are deleted; the store copy is the artifact.

``processes > 1`` trains data-parallel: the job runs the same recipe under ``torchrun`` with one process
per GPU (models/torchrun.py); ``batch_size`` is per process. On Kubernetes the job's pod asks for that
many GPUs (services/training/k8s_executor.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from models.errors import ParameterError
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots
from models.jobs.pinning import pinned_model

# The choices of models.diffusion.config (not imported here: it pulls in torch and diffusers, and
# validation runs in the service process). tests/test_jobs.py checks they match.
RESOLUTIONS = (32, 64, 96, 128, 256)
PRESETS = ("tiny", "small", "base")

FIELDS = {
    "manifest": p.input_file(),
    "lesion_label": p.label(),
    "resolution": p.choice(RESOLUTIONS, 64),
    "preset": p.choice(PRESETS, "small"),
    "mask_conditioning": p.boolean(False),
    # Class-conditional (issue 11, variant 1): the regions of both classes, the class as a label.
    "num_classes": p.choice((0, 2), 0),
    "normal_label": p.label(None),
    "label_dropout": p.number(0.0, 1.0, 0.1, lo_open=True),
    # Pre-training then fine-tuning (variant 2): every region first; then start from a stored synthesizer.
    "all_regions": p.boolean(False),
    "init_from": p.model_ref(None),
    "max_steps": p.integer(1, 10_000_000, 2000),
    "batch_size": p.integer(1, 1024, 8),
    "learning_rate": p.number(0.0, 1.0, 2e-4, lo_open=True),
    "checkpoint_every": p.integer(1, 10_000_000, 500),
    "seed": p.seed(),
    "device": p.device(),
    # One per GPU (one node: torchrun --standalone); >1 on the CPU works too (gloo), as the tests run it.
    "processes": p.integer(1, 16, 1),
}


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


def _settings(params: dict, out: Path):
    from models.diffusion.config import SynthesizerConfig
    from models.diffusion.train import TrainSettings

    return TrainSettings(
        manifest=Path(params["manifest"]),
        lesion_label=params["lesion_label"],
        out=out,
        config=SynthesizerConfig(
            resolution=params["resolution"],
            preset=params["preset"],
            mask_conditioning=params["mask_conditioning"],
            num_classes=params.get("num_classes", 0),
        ),
        normal_label=params.get("normal_label"),
        label_dropout=params.get("label_dropout", 0.1),
        all_regions=params.get("all_regions", False),
        init_from=Path(params["init_from"]) if params.get("init_from") else None,
        max_steps=params["max_steps"],
        batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        checkpoint_every=params["checkpoint_every"],
        seed=params["seed"],
        device=params["device"],
        resume=True,
        progress=False,
    )


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
