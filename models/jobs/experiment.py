"""Job ``experiment``: every balancing strategy x seeds, evaluated on the test split (models.experiment).

``params.config`` is either the path of an experiment YAML file inside the data roots (its relative paths
are relative to the file, as on the command line) or the experiment itself as a JSON object (relative
paths relative to the first data root). Either way the output folder is the service's choice,
``output_root/<job_id>/``: a YAML file's ``out`` is ignored and a JSON object may not name one. The
experiment reuses whatever it finished before, so a restarted job continues.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from models.diffusion.train_settings import snapshot_dir
from models.errors import ConfigError, ParameterError
from models.jobs import params as p
from models.jobs.base import JobContext, JobRoots
from models.model_card import CARD_NAME


def _snapshot_card(model: Path, step: int) -> Path:
    return snapshot_dir(model, step) / CARD_NAME


def _parse(value: Any, base: Path, output_root: Path):
    """The ExperimentConfig of a YAML path or a mapping (imported here: the config module loads torch)."""
    from models.experiment.config import load_config, parse_config

    if isinstance(value, str):
        return load_config(value)
    return parse_config({**value, "out": str(output_root)}, base)


def _check_config(label: str, value: Any, roots: JobRoots) -> Any:
    if isinstance(value, str):
        path = p.resolve_input(label, value, roots)
        if not path.is_file():
            raise ParameterError(f"{label}: no such file: {value}")
        value = str(path)
    elif isinstance(value, dict):
        if "out" in value:
            raise ParameterError(
                f"{label}.out: the output folder is chosen by the service (output_root/<job id>); leave it out"
            )
        split = value.get("split")
        if isinstance(split, dict) and "file" in split:  # parsing reads it: check where it lies first
            role_file = p.resolve_input(f"{label}.split.file", str(split["file"]), roots)
            if not role_file.is_file():
                raise ParameterError(f"{label}.split.file: no such file: {split['file']}")
    else:
        raise ParameterError(f"{label} must be the path of an experiment YAML file or a JSON object")
    try:
        config = _parse(value, roots.data_roots[0], roots.output_root)
    except ConfigError as exc:
        raise ParameterError(f"{label}: {exc}") from None

    manifest = p.resolve_input(f"{label}.manifest", str(config.manifest), roots)
    if not manifest.is_file():
        raise ParameterError(f"{label}.manifest: no such file: {config.manifest}")
    if config.role_file is not None:  # checked again, resolved: a YAML file's own split file too
        p.resolve_input(f"{label}.split.file", str(config.role_file), roots)
    if "model" in config.synthesizer:
        # prepare() would train into a missing folder: only finished models may be named here.
        model = p.resolve_input(f"{label}.synthesizer.model", config.synthesizer["model"], roots)
        if not (model / CARD_NAME).is_file():
            raise ParameterError(
                f"{label}.synthesizer.model: {model} holds no finished synthesizer; leave it out to train "
                "one in the job's output folder"
            )
    if "model" in config.series:
        model = p.resolve_input(f"{label}.series.model", config.series["model"], roots)
        if not all(_snapshot_card(model, step).is_file() for step in config.series["snapshots"]):
            raise ParameterError(
                f"{label}.series.model: {model} lacks some of the snapshots {config.series['snapshots']}; "
                "leave it out to train them in the job's output folder"
            )
    if isinstance(value, str):
        return value
    # Paths made absolute, so the stored parameters mean the same whatever reads them later.
    normalised = {**value, "manifest": str(manifest)}
    if config.role_file is not None:
        normalised["split"] = {**value["split"], "file": str(config.role_file)}
    for key in ("synthesizer", "series"):
        if "model" in getattr(config, key):
            normalised[key] = {**value[key], "model": getattr(config, key)["model"]}
    return normalised


FIELDS = {"config": p.Field(_check_config)}


def validate(params: dict, roots: JobRoots) -> dict:
    return p.normalise(params, FIELDS, roots)


def run(params: dict, ctx: JobContext) -> dict:
    from models.experiment.runner import run_experiment

    config = replace(_parse(params["config"], Path("/"), ctx.output_dir), out=ctx.output_dir)
    results = run_experiment(config, progress=False)
    return {
        "out": str(config.out),
        "report": str(config.out / "report.md"),
        "results": str(config.out / "results.json"),
        "strategies": {
            name: {"auc_mean": float(s["auc_mean"]), "auc_sd": float(s["auc_sd"])}
            for name, s in results["strategies"].items()
        },
    }
