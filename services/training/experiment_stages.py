"""The pod side of the Kubernetes executor: run a job, or one stage of an experiment, in a Job's pod.

    python -m services.training.experiment_stages --stage job|prepare|unit|series|aggregate --job ID \\
        --state-dir DIR --store ROOT --output-root ROOT [--unit-index N]

A pod of a Kubernetes Job (services/training/k8s/, docs/kubernetes-executor.md) cannot use the service's job database: it
lives on the service's ReadWriteOnce volume (docs/deploy_conventions.md), and SQLite must not be shared
across nodes anyway. So a pod talks to the service through files in the job's *state folder* on the
shared outputs volume (ReadWriteMany), ``<output_root>/.lesionsynth-jobs/<job id>/``:

- ``spec.json``      written by the service before it creates the Job: the job's id, type and parameters;
- ``work/``          the job's checkpoints (its ``JobContext.work_dir``), kept across attempts: a rerun resumes;
- ``progress.json``  the current tqdm bar ``{"desc", "n", "total"}`` (models.progress.JsonFileSink; stages
                     job, prepare, series, aggregate), which the executor copies into the job record while it polls;
- ``prepared.json``  the experiment's prepared data (written by ``prepare``, read by the later stages);
- ``result.json``    ``{"result": ...}`` of a successful job (stage ``job`` or ``aggregate``), which the
                     executor records as the job's result.

A failure is one line, the same as the local worker's (a user error's own message, or ``internal error:
<ExcType> (see the job log)`` with the traceback in the log), written to the container's termination
message (``/dev/termination-log``), where the executor reads it from the pod's status; the exit code is 1.

Stages (an experiment is prepare, then N independent units, then the checkpoint series when its config
has one, then aggregate; models/experiment):

- ``job``: any job type, ``JOB_TYPES[type].run(params, ctx)``, as the local worker runs it.
- ``prepare``: ``models.experiment.prepare``: the split, the synthesizer, the balanced manifest.
- ``unit``: unit ``N`` = ``all_units(config)[N]`` (strategy-major: ``N = strategy_index * n_seeds +
  seed_index``), N from ``--unit-index`` or ``$JOB_COMPLETION_INDEX`` (set by Kubernetes in each pod of an
  Indexed Job). It writes ``<output_root>/<job id>/units/<strategy>/seed-<seed>/test_scores.json``.
- ``series``: ``run_series`` (models/experiment/series.py): trains the snapshot synthesizer, balances and
  runs the series' units, measures fidelity; writes ``<output_root>/<job id>/series.json``.
- ``aggregate``: ``aggregate_units`` reads every unit's ``test_scores.json`` from that same shared folder
  (and series.json); it trains nothing. Writes report.md, results.json, roc.png.

Every stage is safe to run again: prepare, units and series reuse what they finished, so a restarted attempt
continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from models.progress import JsonFileSink, read_progress_file

log = logging.getLogger("lesionsynth.stage")

STAGES = ("job", "prepare", "unit", "series", "aggregate")
#: Under the output root: one state folder per job (the id is a uuid hex, so no clash with job outputs).
STATE_DIR_NAME = ".lesionsynth-jobs"
SPEC = "spec.json"
PROGRESS = "progress.json"
PREPARED = "prepared.json"
RESULT = "result.json"
WORK = "work"
#: Kubernetes reads the container's termination message from here (terminationMessagePath's default).
TERMINATION_LOG = Path("/dev/termination-log")
INDEX_ENV = "JOB_COMPLETION_INDEX"
EXIT_FAILED = 1


# -- the state folder (shared with the executor) ------------------------------------------------------


def state_dir(output_root: str | Path, job_id: str) -> Path:
    return Path(output_root) / STATE_DIR_NAME / job_id


def _write_json(path: Path, value: Any) -> None:
    from models.artifacts import atomic_write_json

    atomic_write_json(path, value)


def _read_json(path: Path) -> Any | None:
    """The file's JSON, or None when it is missing or unreadable (a reader must never crash on it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_spec(folder: Path, job_id: str, job_type: str, params: dict) -> None:
    _write_json(folder / SPEC, {"id": job_id, "type": job_type, "params": params})


def read_progress(folder: Path) -> tuple[str, float] | None:
    """(stage, fraction done) of the pod's current bar; None before it wrote one."""
    reported = read_progress_file(folder / PROGRESS)
    if reported is None:
        return None
    stage, n, total = reported
    return stage, min(max(n / total if total else 0.0, 0.0), 1.0)


def read_result(folder: Path) -> dict | None:
    value = _read_json(folder / RESULT)
    return value["result"] if isinstance(value, dict) and isinstance(value.get("result"), dict) else None


def clear_outcome(folder: Path) -> None:
    """Before a new attempt: no stale progress or result from an earlier one."""
    for name in (PROGRESS, RESULT):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


class FileProgress(JsonFileSink):
    """The progress sink of a pod: the current bar to ``progress.json`` (models.progress throttles it),
    in the format torchrun ranks use too; each new stage also goes to the pod's log."""

    def __init__(self, folder: Path, prefix: str = ""):
        super().__init__(folder / PROGRESS)
        self.prefix, self.stage = prefix, None

    def __call__(self, desc: str, n: float, total: float | None) -> None:
        stage = f"{self.prefix}{desc}"
        if stage != self.stage:
            self.stage = stage
            log.info("stage: %s", stage or "(unnamed)")
        super().__call__(stage, n, total)


# -- stages -------------------------------------------------------------------------------------------


def experiment_config(params: dict, output_dir: Path):
    """The experiment's config with ``out = output_dir``, parsed exactly as the ``experiment`` job does."""
    from models.jobs.experiment import _parse

    return replace(_parse(params["config"], Path("/"), output_dir), out=output_dir)


def unit_names(params: dict, output_root: Path, job_id: str) -> list[str]:
    """Index i of the experiment's Indexed Job runs the i-th of these units (strategy-major order)."""
    return experiment_plan(params, output_root, job_id)[0]


def experiment_plan(params: dict, output_root: Path, job_id: str) -> tuple[list[str], bool]:
    """(the unit names in Indexed-Job order, whether the config asks for a checkpoint series stage)."""
    from models.experiment.units import all_units

    config = experiment_config(params, Path(output_root) / job_id)
    return [u.name for u in all_units(config)], bool(config.series)


def experiment_summary(config, results: dict) -> dict:
    """The ``experiment`` job's result (the same fields as models.jobs.experiment.run returns)."""
    return {
        "out": str(config.out),
        "report": str(config.out / "report.md"),
        "results": str(config.out / "results.json"),
        "strategies": {
            name: {"auc_mean": float(s["auc_mean"]), "auc_sd": float(s["auc_sd"])}
            for name, s in results["strategies"].items()
        },
    }


def _prepared(folder: Path):
    from models.errors import LesionsynthError
    from models.experiment.prepare import PreparedData

    value = _read_json(folder / PREPARED)
    if not isinstance(value, dict):
        raise LesionsynthError(f"the experiment was not prepared: {folder / PREPARED} is missing")
    return PreparedData(
        manifest=Path(value["manifest"]),
        split_manifest=Path(value["split_manifest"]),
        synthesizer=Path(value["synthesizer"]) if value.get("synthesizer") else None,
        synthetic_count=int(value["synthetic_count"]),
    )


def unit_index(given: int | None) -> int:
    from models.errors import LesionsynthError

    if given is not None:
        return given
    raw = os.environ.get(INDEX_ENV)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LesionsynthError(f"the unit stage needs --unit-index or ${INDEX_ENV} (got {raw!r})") from None


def run_stage(stage: str, spec: dict, ctx, folder: Path, index: int | None = None) -> dict | None:
    """Run one stage in this process; the job's result for the last stage (job, aggregate), else None."""
    from models.errors import LesionsynthError
    from models.jobs import JOB_TYPES

    if stage == "job":
        result = JOB_TYPES[spec["type"]].run(spec["params"], ctx)
        _write_json(folder / RESULT, {"result": result})
        return result
    if spec["type"] != "experiment":
        raise LesionsynthError(f"stage {stage!r} is for experiment jobs, not {spec['type']!r} jobs")
    config = experiment_config(spec["params"], ctx.output_dir)
    if stage == "prepare":
        from models.experiment.prepare import prepare

        prepared = prepare(config, progress=False)
        _write_json(
            folder / PREPARED,
            {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(prepared).items()},
        )
        log.info("prepared %s (%d synthetic images)", prepared.manifest, prepared.synthetic_count)
        return None
    if stage == "unit":
        from models.experiment.units import all_units, run_unit

        units = all_units(config)
        if not 0 <= index < len(units):
            raise LesionsynthError(f"unit index {index} is not in [0, {len(units) - 1}] for this experiment")
        unit = units[index]
        log.info("unit %d of %d: %s", index, len(units), unit.name)
        try:
            run_unit(config, _prepared(folder).manifest, unit)
        except LesionsynthError as exc:
            raise type(exc)(f"unit {unit.name}: {exc}") from exc
        log.info("unit %s done", unit.name)
        return None
    if stage == "series":
        from models.experiment.series import run_series

        run_series(config, _prepared(folder), progress=False)
        return None
    if stage == "aggregate":
        from models.experiment.aggregate import aggregate_units

        results = aggregate_units(config, _prepared(folder))
        result = experiment_summary(config, results)
        _write_json(folder / RESULT, {"result": result})
        return result
    raise LesionsynthError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")


def report_failure(message: str) -> None:
    """The one-line reason, where Kubernetes shows it (the pod's termination message) and in the log."""
    log.error("failed: %s", message)
    with contextlib.suppress(OSError):
        TERMINATION_LOG.write_text(message)


# -- the command --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="services.training.experiment_stages", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--job", required=True, help="the job's id (checked against spec.json)")
    parser.add_argument("--state-dir", required=True, type=Path, help="the job's state folder (spec.json)")
    parser.add_argument("--store", required=True, type=Path, help="the model store root")
    parser.add_argument("--output-root", required=True, type=Path, help="where jobs write their outputs")
    parser.add_argument("--unit-index", type=int, default=None, help=f"unit stage: default ${INDEX_ENV}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from models import progress
    from models.errors import LesionsynthError
    from models.jobs import JOB_TYPES, JobContext
    from models.store import ModelStore
    from services.training.jobstore import one_line

    folder = args.state_dir
    spec = _read_json(folder / SPEC)
    if not isinstance(spec, dict) or spec.get("id") != args.job or spec.get("type") not in JOB_TYPES:
        report_failure(f"no valid job spec for job {args.job} in {folder / SPEC}")
        return EXIT_FAILED
    log.info("job %s (%s): stage %s", args.job, spec["type"], args.stage)
    work_dir = folder / WORK
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(
        job_id=args.job, work_dir=work_dir, store=ModelStore(args.store), output_root=args.output_root
    )
    if args.stage != "unit":  # units report through the Indexed Job's completions, not a shared file
        progress.set_sink(FileProgress(folder, "" if args.stage == "job" else f"{args.stage}: "))
    try:
        index = unit_index(args.unit_index) if args.stage == "unit" else None
        result = run_stage(args.stage, spec, ctx, folder, index)
    except LesionsynthError as exc:
        report_failure(one_line(str(exc)) or type(exc).__name__)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001  (a bug: the traceback to the log, a short reason to the record)
        traceback.print_exc()
        report_failure(f"internal error: {type(exc).__name__} (see the job log)")
        return EXIT_FAILED
    finally:
        progress.set_sink(None)
    log.info("stage %s succeeded%s", args.stage, f": {result}" if result is not None else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
