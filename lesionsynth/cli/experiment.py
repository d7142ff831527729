"""``lesionsynth experiment``: every balancing strategy x N seeds, evaluated on test."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lesionsynth.cli.app import app, user_errors
from models.errors import LesionsynthError


@app.command("experiment")
@user_errors
def experiment_cmd(
    config: Annotated[Path, typer.Option(help="Experiment YAML (see experiments/).")],
    unit_index: Annotated[
        int | None, typer.Option(help="Run only unit N (strategy-major order), e.g. one Indexed Job pod.")
    ] = None,
    prepare_only: Annotated[bool, typer.Option(help="Only split, train the synthesizer, balance.")] = False,
    aggregate_only: Annotated[
        bool, typer.Option(help="Only aggregate finished units into the report.")
    ] = False,
) -> None:
    """Every balancing strategy x N seeds, evaluated on `test`: report.md, results.json, roc.png."""
    from models.experiment.config import load_config
    from models.experiment.prepare import prepare
    from models.experiment.runner import aggregate_units, run_experiment, run_units
    from models.experiment.units import all_units

    cfg = load_config(config)
    if unit_index is not None:
        units = all_units(cfg)
        if not 0 <= unit_index < len(units):
            raise LesionsynthError(f"--unit-index must be in [0, {len(units) - 1}] for this config")
        run_units(cfg, prepare(cfg).manifest, [units[unit_index]])
        typer.echo(f"unit {units[unit_index].name} done")
        return
    if prepare_only:
        prepared = prepare(cfg)
        typer.echo(f"prepared {prepared.manifest} ({prepared.synthetic_count} synthetic images)")
        return
    results = aggregate_units(cfg, prepare(cfg)) if aggregate_only else run_experiment(cfg)
    for name, s in results["strategies"].items():
        typer.echo(f"{name:20s} AUC {s['auc_mean']:.3f} +- {s['auc_sd']:.3f}")
    typer.echo(f"wrote {cfg.out / 'report.md'}")
