"""Run an experiment: prepare the data, run the units in parallel processes, aggregate, report.

Units run in a ``spawn`` process pool of ``config.workers`` processes, each with
``cores // workers`` torch threads, so N units never oversubscribe the machine. A unit that crashes
(or runs out of memory) takes only its own process down: the others finish, the failure is reported
with the unit's name, and a rerun resumes it while skipping every finished unit.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from models.data.manifest import load_manifest
from models.errors import LesionsynthError
from models.experiment.aggregate import aggregate
from models.experiment.config import ExperimentConfig
from models.experiment.fidelity import fidelity_step
from models.experiment.prepare import PreparedData, prepare
from models.experiment.report import write_report
from models.experiment.series import run_series
from models.experiment.subgroups import case_groups
from models.experiment.units import SCORES, Unit, all_units, reuse_classical_units, run_unit
from models.progress import tqdm

log = logging.getLogger(__name__)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_units(config: ExperimentConfig, manifest: Path, units: list[Unit], progress: bool = True) -> None:
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


def aggregate_units(
    config: ExperimentConfig,
    prepared: PreparedData | None = None,
    run_missing: bool = False,
    progress: bool = True,
) -> dict:
    """Aggregate finished units (and the checkpoint series, running its missing parts if asked)."""
    units = all_units(config)
    missing = [u.name for u in units if not u.is_done(config.out)]
    if missing:
        raise LesionsynthError(
            f"cannot aggregate: {len(missing)} unit(s) not finished: {', '.join(missing[:10])}"
        )
    unit_results = [json.loads((u.folder(config.out) / SCORES).read_text()) for u in units]
    groups = None
    if prepared:
        rows = {r.number: r for r in load_manifest(prepared.manifest, check_files=False).rows}
        groups = case_groups(rows, unit_results[0]["test_rows"])
    results = aggregate(unit_results, primary=config.primary or None, groups=groups)
    fidelity = fidelity_step(config, prepared.manifest) if prepared else None
    if fidelity:
        results["fidelity"] = fidelity
    series = run_series(config, prepared, progress=progress, run_missing=run_missing) if prepared else None
    if series:
        results["series"] = series
    write_report(config.out, results, results_meta(config, prepared))
    return results


def results_meta(config: ExperimentConfig, prepared: PreparedData | None) -> dict:
    def shown(path) -> str | None:
        """Paths as the config file writes them (relative to its folder), so reports hold no home dirs."""
        if path is None:
            return None
        base = config.source.parent if config.source else Path.cwd()
        return os.path.relpath(Path(path).resolve(), base.resolve())

    return {
        "name": config.name,
        "config_file": config.source.name if config.source else None,
        "manifest": shown(prepared.manifest if prepared else config.manifest),
        "synthesizer": shown(prepared.synthesizer) if prepared and prepared.synthesizer else None,
        "synthetic_images": prepared.synthetic_count if prepared else None,
        "classifier": config.classifier,
        "strategies": list(config.strategies),
        "seeds": list(config.seeds),
        "target_sensitivity": config.target_sensitivity,
        "split": {**config.split, "file": shown(config.role_file)} if config.role_file else config.split,
        "balance": config.balance,
        "primary (pre-registered)": config.primary or None,
        "synthesizer_settings": {k: v for k, v in asdict(config)["synthesizer"].items() if k != "model"},
    }


def run_experiment(config: ExperimentConfig, progress: bool = True) -> dict:
    prepared = prepare(config, progress=progress)
    reuse_classical_units(config, all_units(config))
    run_units(config, prepared.manifest, all_units(config), progress=progress)
    return aggregate_units(config, prepared, run_missing=True, progress=progress)
