"""A recipe parameter is declared once (models/spec.py) and every surface derives from it.

The toy recipe below stands in for a new parameter: declared in one class, it becomes a CLI option, a
job parameter with the same range, a checked field in Python and a row of the docs table, with no
other edit. The real recipes are checked the same way, and docs/recipes.md against its generator.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from models.balance_settings import BalanceSettings
from models.classifier.train_settings import ClassifierTrainSettings
from models.diffusion.sampler_settings import SamplerSettings
from models.diffusion.train_settings import TrainSettings
from models.errors import ParameterError
from models.jobs import balance, train_classifier, train_synthesizer
from models.jobs import params as p
from models.jobs.base import JobRoots
from models.spec import REQUIRED, cli_parameters, markdown_table, param, params_of

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class ToyRecipe:
    manifest: Path = param(kind="path", help="Rows.")
    warmup: int = param(100, lo=0, hi=1000, help="Warm-up steps.")
    temperature: float = param(1.0, lo=0.0, hi=2.0, lo_open=True, help="Softness.")
    mode: str = param("fast", choices=("fast", "slow"), help="Which way.")
    secret: int = param(3, lo=1, hi=9, help="Job-only.", cli=False)

    def __post_init__(self):
        from models.spec import check_fields

        check_fields(self)


def test_a_new_parameter_reaches_every_surface(tmp_path):
    # the CLI: an option with the declared default, range in the help, and the value checked
    from lesionsynth.cli.app import with_settings

    app = typer.Typer()
    seen = {}

    @app.command()
    @with_settings(ToyRecipe)
    def run(settings: dict) -> None:
        seen.update(settings)

    runner = CliRunner()
    result = runner.invoke(app, ["--manifest", "m.csv", "--warmup", "7"])
    assert result.exit_code == 0, result.output
    assert seen == {"manifest": Path("m.csv"), "warmup": 7, "temperature": 1.0, "mode": "fast"}
    help_text = runner.invoke(app, ["--help"]).output
    assert "Warm-up steps." in help_text and "[0, 1000]" in help_text and "--secret" not in help_text
    bad = runner.invoke(app, ["--manifest", "m.csv", "--temperature", "0"])
    assert bad.exit_code != 0 and "--temperature must be in (0, 2], got 0" in str(bad.exception)

    # the job: the same field names, defaults and checks, labelled params.x
    (tmp_path / "m.csv").write_text("x\n")
    roots = JobRoots(data_roots=(tmp_path,), output_root=tmp_path / "out")
    fields = p.fields_of(ToyRecipe)
    assert list(fields) == ["manifest", "warmup", "temperature", "mode", "secret"]
    values = p.normalise({"manifest": "m.csv", "secret": 9}, fields, roots)
    assert values == {
        "manifest": str(tmp_path / "m.csv"),
        "warmup": 100,
        "temperature": 1.0,
        "mode": "fast",
        "secret": 9,
    }
    with pytest.raises(ParameterError, match=r"params.mode must be one of fast, slow, got 'slow!'"):
        p.normalise({"manifest": "m.csv", "mode": "slow!"}, fields, roots)
    with pytest.raises(ParameterError, match=r"params.warmup must be in \[0, 1000\], got 1001"):
        p.normalise({"manifest": "m.csv", "warmup": 1001}, fields, roots)

    # Python: the dataclass checks itself; the docs table has a row per parameter
    assert ToyRecipe(**values).manifest == tmp_path / "m.csv"
    with pytest.raises(ParameterError, match="warmup must be an integer"):
        ToyRecipe(manifest=Path("m"), warmup=1.5)
    table = markdown_table(ToyRecipe)
    assert "| `warmup` | `100` | [0, 1000] | job, CLI | Warm-up steps. |" in table
    assert "| `secret` | `3` | [1, 9] | job | Job-only. |" in table


@pytest.mark.parametrize(
    ("spec", "job", "job_only"),
    [
        (TrainSettings, train_synthesizer, {}),
        (ClassifierTrainSettings, train_classifier, {}),
        (BalanceSettings, balance, {"model": "latest"}),
    ],
)
def test_job_fields_are_the_recipe_parameters(spec, job, job_only):
    """Each job offers exactly its recipe's job parameters, with the recipe's defaults (no copies)."""
    declared = {name: default for name, (prm, default) in params_of(spec).items() if prm.job}
    assert set(job.FIELDS) == set(declared)
    for name, default in declared.items():
        expected = job_only.get(name, p._REQUIRED if default is REQUIRED else default)
        assert job.FIELDS[name].default == expected, name


def test_cli_commands_offer_the_recipe_options():
    """The commands' options are the recipe's CLI parameters (plus the command's own)."""
    import typer.main

    from lesionsynth.cli import app

    group = typer.main.get_command(app)
    for command, spec in (
        ("train-synthesizer", TrainSettings),
        ("train-classifier", ClassifierTrainSettings),
        ("balance", BalanceSettings),
        ("synthesize", SamplerSettings),
        ("grid", SamplerSettings),
    ):
        options = {prm.name for prm in group.commands[command].params}
        assert {prm.name for prm in cli_parameters(spec)} <= options, command
    # synthesize's sampler options are unset by default: the synthesizer (or the service) decides
    synth = {prm.name: prm for prm in group.commands["synthesize"].params}
    assert synth["steps"].default is None and "default 6" in synth["steps"].help


def test_settings_classes_check_their_fields():
    with pytest.raises(ParameterError, match=r"batch_size must be in \[1, 1024\], got 0"):
        TrainSettings(manifest=Path("m"), lesion_label="l", out=Path("o"), batch_size=0)
    with pytest.raises(ParameterError, match="balance must be one of none, oversample"):
        ClassifierTrainSettings(manifest=Path("m"), positive_label="p", out=Path("o"), balance="smote")
    with pytest.raises(ParameterError, match=r"steps must be in \[1, 200\], got 500"):
        BalanceSettings(
            manifest=Path("m"), normal_label="n", lesion_label="l", count=1, out=Path("o"), steps=500
        )
    s = TrainSettings(manifest="m.csv", lesion_label="l", out="o", resolution=32, preset="tiny")
    assert s.manifest == Path("m.csv") and s.config.resolution == 32
    assert {f.name for f in dataclasses.fields(s.config)} < {f.name for f in dataclasses.fields(s)}


def test_recipe_docs_are_current():
    """docs/recipes.md is generated (python -m models.recipe_docs); regenerate it after changing a recipe."""
    from models.recipe_docs import render

    assert (REPO / "docs" / "recipes.md").read_text() == render()


def test_cli_signature_keeps_the_commands_own_options():
    from lesionsynth.cli.recipes import synthesize_cmd

    names = list(inspect.signature(synthesize_cmd).parameters)
    assert names[:3] == ["image", "mask", "out"] and "steps" in names and "sampler" not in names
