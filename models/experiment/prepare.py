"""Prepare an experiment's data once, before any unit runs: the split, the synthesizer, the balanced set.

Everything lands under ``<out>/`` and is reused on rerun:

    data/manifest.csv        the input manifest with a split (only written when the input had none); with a
                             role file: the rows of the mapped roles, with ``role`` and ``split`` columns
    data/synthesizer.csv     with ``synthesizer.roles``: the train rows of those roles (what it learns from)
    synthesizer-pretrain/    with ``synthesizer.pretrain``: unconditional, on every train region of the
                             synthesizer's rows (paper 002), the start of the synthesizer's fine-tuning
    synthesizer/             trained on train lesion rows only (unless the config names a model)
    acceptance-filter/       with ``balance.filter``: a region classifier on the synthesizer's train regions
                             (both classes; never val or test) that keeps only the candidates it scores as lesions
    balanced/manifest.csv    real rows + synthetic lesions made from train normal rows and their masks
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from models.acceptance import FilterSettings, train_acceptance_filter
from models.artifacts import atomic_write_json
from models.balance import BalanceSettings, balance_dataset
from models.data.manifest import Manifest, load_manifest
from models.data.roles import assign_splits, check_test_not_trained, read_role_file
from models.data.split import add_split
from models.diffusion.config import SynthesizerConfig
from models.diffusion.copy_paste import CopyPasteInpainter
from models.diffusion.sampler_settings import SamplerSettings
from models.diffusion.train import TrainSettings, train_synthesizer
from models.errors import ConfigError
from models.experiment.config import CHOSEN_ON_VAL, SYNTHESIZER_KEYS, ExperimentConfig
from models.experiment.units import IDENTITY, units_identity
from models.spec import params_of

log = logging.getLogger(__name__)

#: balance keys that are sampler settings; balance.guidance is not one of them here (see balance_guidance).
SAMPLER_KEYS = tuple(k for k in params_of(SamplerSettings) if k != "guidance")


def synthesizer_settings(
    config: ExperimentConfig, split_manifest: Path, out: Path, **overrides
) -> TrainSettings:
    """TrainSettings for the experiment's synthesizer settings (train lesion rows of the split only).

    ``synthesizer`` keys that are train-synthesizer parameters (models/diffusion/train_settings.py; the
    config parser checked them) pass through as they are; the rest (model, roles, pretrain, ...) are
    the experiment's own."""
    synth = config.synthesizer
    recipe = {k: synth[k] for k in SYNTHESIZER_KEYS if k in synth}
    values = dict(
        manifest=split_manifest,
        lesion_label=config.positive_label,
        normal_label=config.normal_label if synth.get("num_classes") else None,
        out=out,
        resume=True,
        device=config.device,
        **recipe,
    )
    values.update(overrides)
    return TrainSettings(**values)


def balance_settings(
    config: ExperimentConfig, split_manifest: Path, model: Path, out: Path, count: int, progress: bool
) -> BalanceSettings:
    return BalanceSettings(
        manifest=split_manifest,
        model=model,
        normal_label=config.normal_label,
        lesion_label=config.positive_label,
        count=count,
        out=out,
        seed=int(config.balance.get("seed", 0)),
        progress=progress,
        source_roles=tuple(config.balance["source_roles"]) if "source_roles" in config.balance else None,
        mode=config.balance.get("mode", "add"),
        masks=config.balance.get("masks", "own"),
        **{k: config.balance[k] for k in SAMPLER_KEYS if k in config.balance},
        guidance=balance_guidance(config),
        **acceptance_settings(config),
    )


def acceptance_settings(config: ExperimentConfig) -> dict:
    """balance.filter {threshold, max_tries, epochs} as BalanceSettings keywords (none without a filter)."""
    chosen = config.balance.get("filter")
    if chosen is None:
        return {}
    named = {"threshold": "accept_threshold", "max_tries": "max_tries"}
    return {"acceptance_filter": config.out / "acceptance-filter"} | {
        named[k]: v for k, v in chosen.items() if k in named
    }


def prepare_acceptance_filter(config: ExperimentConfig, split_path: Path, progress: bool = True) -> None:
    """Train the balance.filter region classifier (train rows of the synthesizer's roles only)."""
    chosen, synth = config.balance["filter"], config.synthesizer
    roles = synth.get("roles")
    train_acceptance_filter(
        FilterSettings(
            manifest=split_path,
            lesion_label=config.positive_label,
            normal_label=config.normal_label,
            out=config.out / "acceptance-filter",
            progress=progress,
            roles=tuple(roles) if roles else None,
            **{
                k: v
                for k, v in (("resolution", synth.get("resolution")), ("epochs", chosen.get("epochs")))
                if v
            },
        )
    )


def balance_guidance(config: ExperimentConfig) -> float | None:
    """balance.guidance: a number, or "chosen-on-val": the scale models.experiment.guidance chose and
    wrote to ``<out>/guidance.json`` (run it first; the test split never takes part)."""
    value = config.balance.get("guidance")
    if value != CHOSEN_ON_VAL:
        return value
    record = config.out / "guidance.json"
    if not record.is_file():
        raise ConfigError(
            f"balance.guidance is {CHOSEN_ON_VAL!r} but {record} does not exist: run "
            f"`python -m models.experiment.guidance --config {config.source or '<config>'} --features <classifier>` first"
        )
    return float(json.loads(record.read_text())["chosen"])


def synthetic_count(config: ExperimentConfig, split_manifest: Path) -> int:
    """balance.count, or 'parity': as many synthetic positives as make train positives = train normals
    (in ``replace`` mode each converted normal also leaves the normals, so half the gap)."""
    count = config.balance.get("count", "parity")
    if count != "parity":
        return int(count)
    split = load_manifest(split_manifest, check_files=False)
    gap = len(split.rows_in("train", config.normal_label)) - len(
        split.rows_in("train", config.positive_label)
    )
    return max(gap // 2 if config.balance.get("mode") == "replace" else gap, 1)


@dataclass(frozen=True)
class PreparedData:
    manifest: Path  # what every unit trains and evaluates on
    split_manifest: Path  # the real rows with their split (what synthesizers train on)
    synthesizer: Path | None
    synthetic_count: int


def prepare_split(config: ExperimentConfig, progress: bool = True) -> Path:
    """The manifest with the experiment's split (written once under ``out/data/`` unless the input has one)."""
    out = config.out
    manifest = load_manifest(config.manifest, progress=progress)
    for label in (config.positive_label, config.normal_label):
        manifest.require_label(label)
    if config.role_file is not None:
        split_path = out / "data" / "manifest.csv"
        if not split_path.is_file():
            write_role_split(manifest, config, split_path)
    elif manifest.has_split():
        split_path = config.manifest
    else:
        split_path = out / "data" / "manifest.csv"
        if not split_path.is_file():
            add_split(manifest, **config.split)
            manifest.save(split_path)
    atomic_write_json(out / IDENTITY, units_identity(config, split_path))
    return split_path


def prepare_synthesizer(config: ExperimentConfig, split_path: Path, progress: bool = True) -> Path:
    """The synthesizer: a given folder, or out/synthesizer; trained here (train lesion rows of the chosen
    roles only) unless the folder already holds a finished synthesizer."""
    model = Path(config.synthesizer.get("model", config.out / "synthesizer"))
    if (model / "model_card.json").is_file():
        return model
    source = synthesizer_manifest(config, split_path)
    start = None
    if "pretrain" in config.synthesizer:
        start = config.out / "synthesizer-pretrain"
        steps = config.synthesizer["pretrain"]["max_steps"]
        settings = synthesizer_settings(config, source, start, progress=progress, max_steps=steps)
        train_synthesizer(replace(settings, all_regions=True))
    train_synthesizer(synthesizer_settings(config, source, model, progress=progress, init_from=start))
    return model


def copy_paste_inpainter(config: ExperimentConfig, split_path: Path) -> CopyPasteInpainter:
    """synthesizer.copy_paste: the train lesion rows (of synthesizer.roles) pasted as they are."""
    rows = load_manifest(synthesizer_manifest(config, split_path), check_files=False).rows_in(
        "train", config.positive_label
    )
    geometry = {k: config.synthesizer[k] for k in ("resolution", "margin") if k in config.synthesizer}
    return CopyPasteInpainter.from_rows(rows, SynthesizerConfig(**geometry))


def prepare(config: ExperimentConfig, progress: bool = True) -> PreparedData:
    split_path = prepare_split(config, progress)
    if not config.needs_synthesis:
        return PreparedData(split_path, split_path, None, 0)
    if config.synthesizer.get("copy_paste"):  # the control: real train lesion regions, no synthesizer
        model, inpainter = None, copy_paste_inpainter(config, split_path)
    else:
        model, inpainter = prepare_synthesizer(config, split_path, progress), None
    if "filter" in config.balance:
        prepare_acceptance_filter(config, split_path, progress)
    count = synthetic_count(config, split_path)
    balanced = balance_dataset(
        balance_settings(config, split_path, model, config.out / "balanced", count, progress), inpainter
    )
    log.info("balanced train split with %d synthetic positives", count)
    return PreparedData(balanced, split_path, model, count)


def write_role_split(manifest: Manifest, config: ExperimentConfig, target: Path) -> Path:
    """The manifest's rows of the roles the config maps, with their split; refused when a test image is
    also (by its bytes) in train or val."""
    rows = assign_splits(manifest.rows, read_role_file(config.role_file), config.split["roles"])
    check_test_not_trained(rows)
    manifest.rows = rows
    for column in ("split", "role"):
        if column not in manifest.columns:
            manifest.columns.append(column)
    return manifest.save(target)


def synthesizer_manifest(config: ExperimentConfig, split_manifest: Path) -> Path:
    """What the synthesizer learns from: the split manifest, or with ``synthesizer.roles`` its train rows
    of those roles only (written beside it)."""
    roles = config.synthesizer.get("roles")
    if not roles:
        return split_manifest
    target = split_manifest.parent / "synthesizer.csv"
    if not target.is_file():
        manifest = load_manifest(split_manifest, check_files=False)
        manifest.rows = [r for r in manifest.rows if r.split == "train" and r.fields.get("role") in roles]
        manifest.save(target)
    return target
