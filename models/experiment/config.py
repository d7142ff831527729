"""Experiment configuration (YAML), validated into dataclasses with errors that name the bad key.

Paths in the file are relative to the file's own folder, so a config travels with its repository.

.. code-block:: yaml

    name: ph2
    manifest: ../../shared/data/ph2/manifest_128.csv
    out: ../runs/experiments/ph2
    positive_label: lesion          # the scarce high-grade class
    normal_label: non_melanoma      # the class synthetic lesions are painted into
    split: {test_fraction: 0.25, val_fraction: 0.1, seed: 0}   # used when the manifest has no split
    synthesizer:                    # settings; with model: DIR, a finished synthesizer there is used as
      resolution: 64              # is, and a missing one is trained there
      preset: small
      max_steps: 3000
    balance: {count: parity}        # or an integer; parity = as many synthetic as needed to match
    classifier: {arch: resnet18, image_size: 128, epochs: 30, batch_size: 32, patience: 10}
    strategies: [none, oversample, weighted-loss, weighted-sampler, synthetic, synthetic+weighted]
    seeds: [0, 1, 2]
    workers: 2                      # parallel unit processes
    series:                         # optional: fidelity vs usefulness over synthesizer checkpoints
      snapshots: [500, 1000, 2000, 3000]   # a synthesizer is trained with these snapshots
      strategy: synthetic
      seeds: [0, 1, 2]

A benchmark with a fixed split (ISIC 2017, see ``models.data.roles``) names a role file instead of
fractions, maps its roles to splits, and says which roles the synthesizer learns from and which normals
are converted; the one comparison the test set decides is declared before the run:

.. code-block:: yaml

    split:
      file: ../docs/evidence/isic2017_split.csv
      roles: {pool: train, donor: train, val: val, test: test}   # other roles are left out
      min_test_positives: 120
    synthesizer: {roles: [donor], ...}        # lesion regions of these train roles only
    # synthesizer: {pretrain: {max_steps: 2400}, max_steps: 1200, ...}   every region first, then lesions
    balance: {count: 200, source_roles: [pool], mode: replace}   # replace: converted normals leave the
                                              # synthetic strategies' pool (paper 000: 1218 -> 918 normal)
    primary: {strategy: synthetic, against: best-classical}      # best classical = highest mean val AUC
    # balance: {filter: {threshold: 0.5, max_tries: 4}}   keep only candidates a region classifier (train
    #                                                      regions only) scores as lesions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.balance_settings import BalanceSettings
from models.classifier.balancing import BEST_CLASSICAL, CLASSICAL, STRATEGIES
from models.classifier.train_settings import ClassifierTrainSettings
from models.data.roles import check_role_mapping, read_role_file
from models.diffusion.train_settings import TrainSettings
from models.errors import ConfigError
from models.spec import check_fields, check_value, param, params_of, same_as

CHOSEN_ON_VAL = "chosen-on-val"  # balance.guidance: the scale models.experiment.guidance chose on val


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = param(kind="text", help="The experiment's name (report titles).")
    manifest: Path = param(kind="path", help="CSV manifest, relative to the config file.")
    out: Path = param(kind="path", help="Output folder, relative to the config file (the job sets it).")
    positive_label: str = param(kind="label", help="The lesion class (the classifier's positive).")
    normal_label: str = param(kind="label", help="The class synthetic lesions are painted into.")
    split: dict = field(default_factory=lambda: {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 0})
    synthesizer: dict = field(default_factory=dict)
    balance: dict = field(default_factory=lambda: {"count": "parity"})
    classifier: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)
    primary: dict = field(default_factory=dict)
    #: An earlier experiment's output folder whose classical units (no synthetic image) this one takes
    #: instead of training them again: a synthesizer variant then costs only its synthetic units.
    reuse_units: Path | None = None
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = param(1, lo=1, hi=64, help="Units trained at once (processes).")
    target_sensitivity: float = same_as(ClassifierTrainSettings, "target_sensitivity")
    device: str | None = same_as(ClassifierTrainSettings, "device")
    source: Path | None = None

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def role_file(self) -> Path | None:
        return Path(self.split["file"]) if "file" in self.split else None

    @property
    def needs_synthesis(self) -> bool:
        return any(s.startswith("synthetic") for s in self.strategies)


_ALLOWED = set(ExperimentConfig.__dataclass_fields__) - {"source"}
#: synthesizer keys that are train-synthesizer parameters (the rest of the recipe comes from the
#: experiment: its manifest, labels and device); and the experiment's own synthesizer keys.
SYNTHESIZER_KEYS = tuple(
    name
    for name, (p, _) in params_of(TrainSettings).items()
    if p.job
    and name
    not in ("manifest", "lesion_label", "normal_label", "device", "processes", "all_regions", "init_from")
)
_SYNTHESIZER_OWN = ("model", "roles", "pretrain", "copy_paste")
#: balance keys that are balance parameters; and the experiment's own (count may be "parity", guidance
#: "chosen-on-val", filter and source_roles are the experiment's).
BALANCE_KEYS = ("seed", "mode", "masks", "steps", "strength", "eta", "resample")
_BALANCE_OWN = ("count", "guidance", "filter", "source_roles")
#: classifier keys: train-classifier parameters but those the experiment sets per unit or for all.
CLASSIFIER_KEYS = tuple(
    name
    for name, (p, _) in params_of(ClassifierTrainSettings).items()
    if p.job and name not in ("manifest", "positive_label", "balance", "seed", "target_sensitivity", "device")
)
_REQUIRED = ("name", "manifest", "out", "positive_label", "normal_label")


def parse_config(raw: Any, base: Path, source: Path | None = None) -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError("experiment config must be a YAML mapping")
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        raise ConfigError(f"unknown key(s) in experiment config: {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"experiment config is missing: {', '.join(missing)}")
    values = dict(raw)
    for key in ("manifest", "out"):
        values[key] = (base / str(values[key])).resolve()
    if values.get("reuse_units") is not None:
        values["reuse_units"] = (base / str(values["reuse_units"])).resolve()
        if values["reuse_units"] == values["out"]:
            raise ConfigError("reuse_units must be another experiment's output folder, not this one's")
    if "model" in values.get("synthesizer", {}):
        values["synthesizer"] = {
            **values["synthesizer"],
            "model": str((base / values["synthesizer"]["model"]).resolve()),
        }
    if "file" in values.get("split", {}):
        values["split"] = _parse_role_split(values["split"], base, values["positive_label"])
    _check_roles_subset(values)
    values["strategies"] = tuple(values.get("strategies", STRATEGIES))
    bad = [s for s in values["strategies"] if s not in STRATEGIES]
    if bad:
        raise ConfigError(f"unknown strategies {bad}; choose from {', '.join(STRATEGIES)}")
    if "none" not in values["strategies"]:
        raise ConfigError("strategies must include 'none': every strategy is compared against it")
    seeds = values.get("seeds", (0, 1, 2))
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError("seeds must be a non-empty list of non-negative integers")
    values["seeds"] = tuple(seeds)
    count = values.get("balance", {}).get("count", "parity")
    if count != "parity" and not (isinstance(count, int) and count > 0):
        raise ConfigError("balance.count must be 'parity' or a positive integer")
    series = values.get("series") or {}
    if series:
        snaps = series.get("snapshots")
        if not snaps or not all(isinstance(v, int) and v > 0 for v in snaps):
            raise ConfigError("series.snapshots must be a non-empty list of positive step counts")
        if series.get("strategy", "synthetic") not in STRATEGIES or not series.get(
            "strategy", "synthetic"
        ).startswith("synthetic"):
            raise ConfigError("series.strategy must be 'synthetic' or 'synthetic+weighted'")
        if "model" in series:
            values["series"] = {**series, "model": str((base / series["model"]).resolve())}
    values["primary"] = _parse_primary(values.get("primary") or {}, values["strategies"])
    _check_section(
        "synthesizer", values.get("synthesizer", {}), TrainSettings, SYNTHESIZER_KEYS, _SYNTHESIZER_OWN
    )
    _check_pretrain(values.get("synthesizer", {}))
    _check_copy_paste(values.get("synthesizer", {}), values.get("series") or {})
    _check_filter(values.get("balance", {}).get("filter"))
    guidance = values.get("balance", {}).get("guidance")
    if guidance is not None and guidance != CHOSEN_ON_VAL and not isinstance(guidance, int | float):
        raise ConfigError(f"balance.guidance must be a number or {CHOSEN_ON_VAL!r}, not {guidance!r}")
    _check_section("classifier", values.get("classifier", {}), ClassifierTrainSettings, CLASSIFIER_KEYS)
    _check_section("balance", values.get("balance", {}), BalanceSettings, BALANCE_KEYS, _BALANCE_OWN)
    return ExperimentConfig(**values, source=source)


def _parse_role_split(split: dict, base: Path, positive_label: str) -> dict:
    unknown = sorted(set(split) - {"file", "roles", "min_test_positives"})
    if unknown:
        raise ConfigError(f"unknown key(s) in split with a file: {', '.join(unknown)}")
    roles = split.get("roles")
    if not isinstance(roles, dict) or not roles:
        raise ConfigError("split.roles must map the role file's roles to train / val / test")
    minimum = split.get("min_test_positives", 0)
    if not isinstance(minimum, int) or minimum < 0:
        raise ConfigError("split.min_test_positives must be a non-negative integer")
    file = (base / str(split["file"])).resolve()
    check_role_mapping(read_role_file(file), roles, positive_label, minimum)
    return {"file": str(file), "roles": dict(roles), "min_test_positives": minimum}


def _check_section(name: str, section: Any, spec: type, keys: tuple, own: tuple = ()) -> None:
    """Every key of a section is known (a recipe parameter, or the experiment's ``own``), and a recipe
    parameter's value is in its range (models/spec.py): a typo fails here, not in a worker hours later."""
    if not isinstance(section, dict):
        raise ConfigError(f"{name} must be a mapping")
    unknown = sorted(set(section) - {*keys, *own})
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {name}: {', '.join(unknown)}; allowed: {', '.join((*keys, *own))}"
        )
    declared = params_of(spec)
    for key in keys:
        if key in section:
            check_value(declared[key][0], section[key], f"{name}.{key}")


def _check_pretrain(synthesizer: dict) -> None:
    """synthesizer.pretrain: {max_steps: N}: N unconditional steps on every region of the synthesizer's
    train rows, then ``max_steps`` of fine-tuning on the lesion regions (paper 002)."""
    if "pretrain" not in synthesizer:
        return
    pretrain = synthesizer["pretrain"]
    if not isinstance(pretrain, dict) or set(pretrain) != {"max_steps"}:
        raise ConfigError("synthesizer.pretrain must be {max_steps: N}")
    if not isinstance(pretrain["max_steps"], int) or pretrain["max_steps"] < 1:
        raise ConfigError("synthesizer.pretrain.max_steps must be a positive integer")
    if synthesizer.get("num_classes") or "model" in synthesizer:
        raise ConfigError(
            "synthesizer.pretrain is for an unconditional synthesizer trained here (no num_classes, no model)"
        )


def _check_copy_paste(synthesizer: dict, series: dict) -> None:
    """synthesizer.copy_paste: true (models.diffusion.copy_paste, a control): no synthesizer settings."""
    if not synthesizer.get("copy_paste"):
        return
    extra = sorted(set(synthesizer) - {"copy_paste", "resolution", "margin", "roles"})
    if synthesizer["copy_paste"] is not True or extra or series:
        raise ConfigError(
            "synthesizer.copy_paste: true pastes real train lesion regions; it takes only resolution, "
            f"margin and roles (not {', '.join(extra) or 'a series'})"
        )


def _check_filter(chosen: Any) -> None:
    """balance.filter: {threshold (0-1), max_tries, epochs}, each optional (0.5, 4, 30)."""
    if chosen is None:
        return
    if not isinstance(chosen, dict) or not set(chosen) <= {"threshold", "max_tries", "epochs"}:
        raise ConfigError("balance.filter must be a mapping of threshold, max_tries and epochs")
    threshold = chosen.get("threshold", 0.5)
    if not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise ConfigError("balance.filter.threshold must be a number in (0, 1)")
    for key, top in (("max_tries", 100), ("epochs", 1000)):
        value = chosen.get(key, 1)
        if not isinstance(value, int) or not 1 <= value <= top:
            raise ConfigError(f"balance.filter.{key} must be an integer in [1, {top}]")


def _check_roles_subset(values: dict) -> None:
    """synthesizer.roles and balance.source_roles must be roles that train."""
    train_roles = {r for r, s in values.get("split", {}).get("roles", {}).items() if s == "train"}
    for section, key in (("synthesizer", "roles"), ("balance", "source_roles")):
        chosen = values.get(section, {}).get(key)
        if chosen is None:
            continue
        if "file" not in values.get("split", {}):
            raise ConfigError(f"{section}.{key} needs a split file with roles (split.file)")
        if not isinstance(chosen, list) or not chosen or not set(chosen) <= train_roles:
            raise ConfigError(
                f"{section}.{key} must be a non-empty list of roles mapped to train ({sorted(train_roles)})"
            )


def _parse_primary(primary: dict, strategies: tuple[str, ...]) -> dict:
    """The pre-registered comparison: {strategy, against} where against is a strategy or best-classical."""
    if not primary:
        return {}
    unknown = sorted(set(primary) - {"strategy", "against"})
    if unknown:
        raise ConfigError(f"unknown key(s) in primary: {', '.join(unknown)}")
    strategy, against = primary.get("strategy"), primary.get("against", BEST_CLASSICAL)
    if strategy not in strategies:
        raise ConfigError(f"primary.strategy {strategy!r} is not among the strategies {list(strategies)}")
    if against == BEST_CLASSICAL:
        if not any(s in CLASSICAL for s in strategies):
            raise ConfigError("primary.against is best-classical but no classical strategy is run")
    elif against not in strategies or against == strategy:
        raise ConfigError(
            f"primary.against must be {BEST_CLASSICAL!r} or another strategy of the run, not {against!r}"
        )
    return {"strategy": strategy, "against": against}


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}") from exc
    return parse_config(raw, path.parent, source=path)
