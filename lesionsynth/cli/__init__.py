"""The ``lesionsynth`` command line (``python -m lesionsynth.cli``, or the ``lesionsynth`` script).

app.py holds the typer app and what the commands share; each other module registers its commands, in
the order ``--help`` lists them.
"""

# isort: off
from lesionsynth.cli.app import app, main
from lesionsynth.cli import data, recipes, experiment, export, provenance, masks, dicomweb  # noqa: F401  (registers the commands)
# isort: on

__all__ = ["app", "main"]
