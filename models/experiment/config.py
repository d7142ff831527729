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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.classifier.balancing import STRATEGIES
from models.classifier.config import ClassifierConfig
from models.errors import ConfigError


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    manifest: Path
    out: Path
    positive_label: str
    normal_label: str
    split: dict = field(default_factory=lambda: {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 0})
    synthesizer: dict = field(default_factory=dict)
    balance: dict = field(default_factory=lambda: {"count": "parity"})
    classifier: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 1
    target_sensitivity: float = 0.9
    device: str | None = None
    source: Path | None = None

    @property
    def classifier_config(self) -> ClassifierConfig:
        keys = ("arch", "image_size")
        return ClassifierConfig(**{k: self.classifier[k] for k in keys if k in self.classifier})

    @property
    def training(self) -> dict:
        """Classifier training settings other than the architecture."""
        keys = ("epochs", "batch_size", "learning_rate", "weight_decay", "patience")
        return {k: self.classifier[k] for k in keys if k in self.classifier}

    @property
    def needs_synthesis(self) -> bool:
        return any(s.startswith("synthetic") for s in self.strategies)


_ALLOWED = set(ExperimentConfig.__dataclass_fields__) - {"source"}
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
    if "model" in values.get("synthesizer", {}):
        values["synthesizer"] = {
            **values["synthesizer"],
            "model": str((base / values["synthesizer"]["model"]).resolve()),
        }
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
    if not isinstance(values.get("workers", 1), int) or values.get("workers", 1) < 1:
        raise ConfigError("workers must be an integer >= 1")
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
    config = ExperimentConfig(**values, source=source)
    config.classifier_config  # noqa: B018  (validates arch and image_size now, not in a worker later)
    return config


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name} is not valid YAML: {exc}") from exc
    return parse_config(raw, path.parent, source=path)
