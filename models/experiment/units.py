"""One unit of the experiment: train a classifier for one (strategy, seed) and score the test split.

A unit is a plain function of (config, prepared manifest, unit) that writes into its own folder
``<out>/units/<strategy>/seed-<seed>/`` and finishes by writing ``test_scores.json`` atomically: a unit
with that file is done and is skipped on rerun; a unit without it resumes its classifier training from
the newest checkpoint. Units share nothing at run time, so they can run as separate processes here or as
the pods of one Kubernetes Indexed Job (``lesionsynth experiment --unit-index N``).

:func:`run_units` runs a list of units in a ``spawn`` process pool of ``config.workers`` processes, each
with ``cores // workers`` torch threads, so N units never oversubscribe the machine. A unit that crashes
(or runs out of memory) takes only its own process down: the others finish, the failure is reported
with the unit's name, and a rerun resumes it while skipping every finished unit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from models.artifacts import atomic_write_json
from models.classifier.balancing import CLASSICAL
from models.classifier.folder import load_classifier
from models.classifier.predict import predict_rows
from models.classifier.train import ClassifierTrainSettings, train_classifier
from models.data.manifest import load_manifest
from models.errors import ConfigError, LesionsynthError
from models.experiment.config import ExperimentConfig
from models.progress import tqdm

SCORES = "test_scores.json"
IDENTITY = "units.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    strategy: str
    seed: int
    tag: str = ""  # a sub-experiment, e.g. "series/step-001000" for one synthesizer checkpoint

    @property
    def name(self) -> str:
        return f"{self.tag + '/' if self.tag else ''}{self.strategy}/seed-{self.seed}"

    def folder(self, out: Path) -> Path:
        root = out / self.tag if self.tag else out
        return root / "units" / self.strategy.replace("+", "-plus-") / f"seed-{self.seed}"

    def is_done(self, out: Path) -> bool:
        return (self.folder(out) / SCORES).is_file()


def all_units(config: ExperimentConfig) -> list[Unit]:
    """Units in a fixed order (index i is the i-th pod of an Indexed Job)."""
    return [Unit(strategy, seed) for strategy in config.strategies for seed in config.seeds]


def run_unit(config: ExperimentConfig, manifest: Path, unit: Unit, progress: bool = False) -> dict:
    folder = unit.folder(config.out)
    if unit.is_done(config.out):
        return json.loads((folder / SCORES).read_text())
    model_dir = folder / "classifier"
    train_classifier(
        ClassifierTrainSettings(
            manifest=manifest,
            positive_label=config.positive_label,
            out=model_dir,
            balance=unit.strategy,
            seed=unit.seed,
            target_sensitivity=config.target_sensitivity,
            resume=True,
            device=config.device,
            progress=progress,
            **config.classifier,
        )
    )
    # The only place the test split is read: inference with the finished model.
    model = load_classifier(model_dir)
    test_rows = [r for r in load_manifest(manifest, check_files=False).rows_in("test")]
    test_rows = [r for r in test_rows if r.fields.get("synthetic", "0") != "1"]
    scores = predict_rows(model, test_rows)
    result = {
        "unit": unit.name,
        "strategy": unit.strategy,
        "seed": unit.seed,
        "model_version": model.model_version,
        "threshold": model.threshold,
        "val": model.card["val"],
        "epochs_run": model.card["epochs_run"],
        "train": model.card["train"],
        "test_rows": [r.number for r in test_rows],
        "labels": [int(r.label == config.positive_label) for r in test_rows],
        "scores": [float(s) for s in scores],
    }
    atomic_write_json(folder / SCORES, result)
    return result


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_units(config: ExperimentConfig, manifest: Path, units: list[Unit], progress: bool = True) -> None:
    """Run the unfinished ``units`` on ``manifest``, ``config.workers`` at a time; raise naming every
    unit that failed (after the others finished)."""
    todo = [u for u in units if not u.is_done(config.out)]
    if not todo:
        return
    workers = min(config.workers, len(todo))
    threads = max(1, (os.cpu_count() or 1) // workers)
    failures: list[str] = []
    bar = tqdm(
        total=len(units),
        initial=len(units) - len(todo),
        desc="experiment units",
        unit="unit",
        disable=not progress,
    )
    if workers == 1:
        for unit in todo:
            try:
                run_unit(config, manifest, unit)
            except Exception as exc:  # noqa: BLE001  (reported below with the unit's name)
                failures.append(f"{unit.name}: {type(exc).__name__}: {exc}")
            bar.update(1)
    else:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(run_unit, config, manifest, u): u for u in todo}
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001  (includes a worker killed by the OOM killer)
                    failures.append(f"{futures[future].name}: {type(exc).__name__}: {exc}")
                bar.update(1)
    bar.close()
    if failures:
        raise LesionsynthError(
            f"{len(failures)} of {len(todo)} units failed (rerun to resume them; finished units are kept):\n"
            + "\n".join(f"  - {f}" for f in failures)
        )


def units_identity(config: ExperimentConfig, split_manifest: Path) -> dict:
    """What makes a classical unit's result the same in two experiments: the real rows (number, image
    file, label, split; not their paths relative to the output folder) and the classifier settings.
    Written to ``<out>/units.json`` by prepare."""
    rows = load_manifest(split_manifest, check_files=False).rows
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.number}\t{row.image_file.resolve()}\t{row.label}\t{row.split}\n".encode())
    return {
        "real_rows_sha256": digest.hexdigest(),
        "positive_label": config.positive_label,
        "classifier": config.classifier,
        "target_sensitivity": config.target_sensitivity,
        "device": config.device,
    }


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (the reused classifier folders are read only; ~45 MB each at ResNet-18 size), or a
    copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reuse_classical_units(config: ExperimentConfig, units: list[Unit]) -> list[Unit]:
    """Copy the finished classical units of ``config.reuse_units`` (same identity) into this experiment;
    return the units copied. Refused when the identities differ: the results would not be comparable."""
    if config.reuse_units is None:
        return []
    source, target = config.reuse_units / IDENTITY, config.out / IDENTITY
    if not source.is_file():
        raise ConfigError(
            f"reuse_units: {config.reuse_units} holds no {IDENTITY} (run its prepare step first)"
        )
    theirs, ours = json.loads(source.read_text()), json.loads(target.read_text())
    if theirs != ours:
        changed = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
        raise ConfigError(
            f"reuse_units: {config.reuse_units} differs in {', '.join(changed)}; its units cannot stand in"
        )
    copied = []
    for unit in units:
        done = unit.folder(config.reuse_units) / SCORES
        if unit.strategy in CLASSICAL and not unit.is_done(config.out) and done.is_file():
            unit.folder(config.out).mkdir(parents=True, exist_ok=True)
            if (unit.folder(config.reuse_units) / "classifier").is_dir():
                shutil.copytree(
                    unit.folder(config.reuse_units) / "classifier",
                    unit.folder(config.out) / "classifier",
                    dirs_exist_ok=True,
                    copy_function=_link_or_copy,
                )
            atomic_write_json(
                unit.folder(config.out) / SCORES, {**json.loads(done.read_text()), "reused_from": str(done)}
            )
            copied.append(unit)
    log.info("reused %d classical units from %s", len(copied), config.reuse_units)
    return copied
