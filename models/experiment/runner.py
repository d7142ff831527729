"""Run an experiment here, its stages in order: prepare, the units, the checkpoint series, aggregate.

Each stage is a module of its own and safe to run again (finished parts are skipped): prepare.py (split,
synthesizer, balanced manifest), units.py (``run_units``: one classifier per strategy and seed, in a
process pool), series.py (fidelity vs AUC over synthesizer snapshots, when the config asks for it) and
aggregate.py (``aggregate_units``: reads the results, trains nothing). On Kubernetes the same stages are
Jobs of their own (services/training/experiment_stages.py). ``run_units`` and ``aggregate_units`` are
importable from here too (the CLI's ``--unit-index`` and ``--aggregate-only``).
"""

from __future__ import annotations

from models.experiment.aggregate import aggregate_units
from models.experiment.config import ExperimentConfig
from models.experiment.prepare import prepare
from models.experiment.series import run_series
from models.experiment.units import all_units, reuse_classical_units, run_units

__all__ = ["aggregate_units", "run_experiment", "run_units"]


def run_experiment(config: ExperimentConfig, progress: bool = True) -> dict:
    prepared = prepare(config, progress=progress)
    reuse_classical_units(config, all_units(config))
    run_units(config, prepared.manifest, all_units(config), progress=progress)
    run_series(config, prepared, progress=progress)
    return aggregate_units(config, prepared)
