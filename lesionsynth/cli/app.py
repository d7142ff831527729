"""The ``lesionsynth`` command line: the typer app, its error handling and the options commands share.

Each command is a thin wrapper over a function in ``models`` (the services call the same functions).
Heavy imports (torch, diffusers) happen inside commands so ``--help`` is instant. Every error a user can
fix is a :class:`~models.errors.LesionsynthError`: it is printed as one clear message and the command
exits with status 2 without writing its output. A recipe's options are not written here: they come from
its settings class (:func:`with_settings`, models/spec.py).
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from models.errors import LesionsynthError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The lesionsynth command line.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset manifests: check, split, demo data.")
app.add_typer(data_app, name="data")
err = Console(stderr=True)


def user_errors(fn):
    """Turn LesionsynthError into a red one-line (or one-list) message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LesionsynthError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


def with_settings(spec: type, exclude: tuple[str, ...] = (), unset: bool = False, into: str = "settings"):
    """The command gets one option per parameter of ``spec`` (models/spec.py: default, range and help come
    from its declaration) and receives them as ``settings: dict``; its own options stay in its signature.

    So a new recipe parameter needs no edit here: declared in the recipe's settings class, it is an option.
    ``unset``: options default to None, meaning the recipe's default (models.spec.cli_parameters).
    """
    import inspect

    from models.spec import check_value, cli_parameters, params_of

    declared = cli_parameters(spec, exclude, unset)
    names = {p.name for p in declared}
    contracts = params_of(spec)

    def decorate(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != into]
        clash = names & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__}: options declared twice: {sorted(clash)}")

        @functools.wraps(fn)
        def wrapper(**kwargs):
            settings = {}
            for name in names:
                value = kwargs.pop(name)
                if value is not None:
                    value = check_value(contracts[name][0], value, "--" + name.replace("_", "-"))
                settings[name] = value
            return fn(**{into: settings}, **kwargs)

        # required options first, then the recipe's, then the command's own
        ordered = sorted([*declared, *own], key=lambda p: p.default is not inspect.Parameter.empty)
        wrapper.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in ordered]
        )
        wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
        return wrapper

    return decorate


ManifestOpt = Annotated[
    Path, typer.Option("--manifest", "-m", help="CSV manifest (image_path,mask_path,label,...)")
]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
RemoteOpt = Annotated[
    str | None,
    typer.Option(help="URL of a synthesis service to paint with (token from LESIONSYNTH_API_TOKEN)."),
]


def remote_inpainter(url: str, concurrency: int = 4, progress: bool = False):
    """The synthesis service at ``url`` as an inpainter (token from LESIONSYNTH_API_TOKEN)."""
    from services.client import SynthesisClient
    from services.client.remote_inpainter import RemoteInpainter

    return RemoteInpainter(SynthesisClient(url, max_concurrency=concurrency), progress=progress)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app()
