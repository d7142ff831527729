"""Declare a recipe's parameters once: this project's version of diffusers' ``register_to_config``.

A recipe (train-synthesizer, train-classifier, balance, the sampler) is a frozen dataclass whose fields
say their default, their range or choices, and their help text::

    max_steps: int = param(2000, lo=1, hi=10_000_000, help="Optimiser steps.")

Everything else is derived from that one line, so a new parameter is a one-file change (docs/DESIGN.md
shows the diff):

- the CLI's typer options (:func:`cli_parameters`, used by ``lesionsynth.cli``);
- the training service's job-parameter checks (``models.jobs.params.fields_of``);
- the range checks when the dataclass is built in Python (:func:`check_fields`, from ``__post_init__``);
- the parameter tables in docs/recipes.md (:func:`markdown_table`; a test keeps the file current).

Torch-free: the training service validates requests with these classes without loading torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import ParameterError

REQUIRED: Any = dataclasses.MISSING

#: What a parameter holds. ``path``: a file a command reads; ``model``: a synthesizer folder (the CLI) or
#: a model store reference (a job); ``label``: a manifest label; the rest as named.
KINDS = ("integer", "number", "boolean", "choice", "text", "label", "seed", "device", "path", "model")
MAX_SEED = 2**63 - 1
_DEVICE = re.compile(r"cpu|cuda(:\d{1,2})?|mps")
_CLI_TYPES = {
    "integer": int,
    "number": float,
    "boolean": bool,
    "text": str,
    "label": str,
    "seed": int,
    "device": str,
    "path": Path,
    "model": Path,
}


@dataclass(frozen=True)
class Param:
    """A field's contract. ``cli`` / ``job``: whether the command line / the job API offers it."""

    kind: str
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    cli: bool = True
    job: bool = True

    def describe(self) -> str:
        """The allowed values, in words: "[1, 1024]", "(0, 1]", "one of 32, 64"."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "seed":
            return "[0, 2^63 - 1]"
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{_number(self.lo)}, {_number(self.hi)}]"
        return ""


#: A random seed's contract, for checks outside a recipe (a request's seed).
SEED = Param("seed", "Random seed.")


def param(
    default: Any = REQUIRED,
    *,
    help: str,
    kind: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: Iterable = (),
    cli: bool = True,
    job: bool = True,
) -> Any:
    """A dataclass field with its contract in the field's metadata (see the module docstring).

    ``kind`` is inferred when not given: choices -> choice, a bool default -> boolean, an int -> integer,
    a float -> number. ``default=None`` means "unset": the value is optional everywhere.
    """
    choices = tuple(choices)
    if kind is None:
        if choices:
            kind = "choice"
        elif isinstance(default, bool):
            kind = "boolean"
        elif isinstance(default, int):
            kind = "integer"
        elif isinstance(default, float):
            kind = "number"
        else:
            raise TypeError("param(): give kind= when the default does not say it")
    if kind not in KINDS:
        raise TypeError(f"param(): unknown kind {kind!r}")
    meta = {"param": Param(kind, help, lo, hi, lo_open, choices, cli, job)}
    return dataclasses.field(default=default, metadata=meta)


def same_as(spec, name: str) -> Any:
    """Another recipe's parameter ``name`` as it is declared there, default included: how a recipe that
    passes a value on (the experiment's ``target_sensitivity`` to train-classifier) declares it once."""
    p, default = params_of(spec)[name]
    return dataclasses.field(default=default, metadata={"param": p})


def optional(spec, name: str) -> Any:
    """Another recipe's parameter ``name``, unset (None) by default: unset means that recipe's default.

    How balance offers the sampler's settings without copying their ranges or help."""
    p, _ = params_of(spec)[name]
    return dataclasses.field(default=None, metadata={"param": p})


def params_of(cls) -> dict[str, tuple[Param, Any]]:
    """``{name: (Param, default)}`` of a recipe class (or instance), in declaration order; the default
    is :data:`REQUIRED` for a required parameter. Fields made without :func:`param` are not parameters."""
    return {
        f.name: (f.metadata["param"], f.default) for f in dataclasses.fields(cls) if "param" in f.metadata
    }


def check_value(p: Param, value: Any, label: str) -> Any:
    """``value`` checked against ``p`` (numbers as float); ParameterError naming ``label`` otherwise.

    The one checker of every surface: the job API labels fields ``params.x``, the CLI ``--x``, Python
    callers ``x``. Paths and model references are only type-checked here; the job API also checks that
    they resolve inside its roots (models/jobs/params.py).
    """
    kind = p.kind
    if kind == "choice":
        if isinstance(value, bool) or value not in p.choices:
            raise ParameterError(f"{label} must be {p.describe()}, got {shown(value)}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ParameterError(f"{label} must be true or false, got {shown(value)}")
        return value
    if kind in ("integer", "seed"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"{label} must be an integer, got {shown(value)}")
        lo, hi = (0, MAX_SEED) if kind == "seed" else (p.lo, p.hi)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ParameterError(f"{label} must be in {p.describe()}, got {value}")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(f"{label} must be a number, got {shown(value)}")
        below = value <= p.lo if p.lo_open else value < p.lo
        if (p.lo is not None and below) or (p.hi is not None and value > p.hi):
            raise ParameterError(f"{label} must be in {p.describe()}, got {value}")
        return float(value)
    if kind in ("path", "model"):
        if not isinstance(value, str | Path) or not str(value) or "\x00" in str(value):
            raise ParameterError(f"{label} must be a path, got {shown(value)}")
        return value
    if not isinstance(value, str) or not value or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise ParameterError(f"{label} must be a short text, got {shown(value)}")
    if kind == "device" and not _DEVICE.fullmatch(value):
        raise ParameterError(f"{label} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {shown(value)}")
    if kind == "label" and ("," in value or '"' in value):
        raise ParameterError(f"{label} must be a label (no commas or quotes), got {shown(value)}")
    return value


def check_fields(obj: Any, label: Callable[[str], str] = str) -> None:
    """Check every parameter of a recipe instance (None is "unset" where the default is None); a path
    given as text (a job's JSON parameters) becomes a Path. Called from the recipe's ``__post_init__``."""
    for name, (p, default) in params_of(obj).items():
        value = getattr(obj, name)
        if value is None and default is None:
            continue
        check_value(p, value, label(name))
        if p.kind in ("path", "model") and isinstance(value, str):
            object.__setattr__(obj, name, Path(value))  # frozen dataclasses: the documented way


def cli_parameters(cls, exclude: Iterable[str] = (), unset: bool = False) -> list:
    """The recipe's command-line options as ``inspect.Parameter`` objects for a typer command.

    Typer imports lazily (the services import this module). Options are ``--name-with-dashes``; booleans
    get ``--x/--no-x``; help says the allowed values. ``unset``: every option defaults to None (unset:
    whoever runs the recipe applies its own default, e.g. a synthesis service), help naming the default.
    """
    import inspect
    from typing import Annotated

    import typer

    skip = set(exclude)
    out = []
    for name, (p, default) in params_of(cls).items():
        if not p.cli or name in skip:
            continue
        base = type(p.choices[0]) if p.kind == "choice" else _CLI_TYPES[p.kind]
        allowed = p.describe()
        text = f"{p.help} ({allowed})" if allowed and p.kind not in ("seed",) else p.help
        if unset and default is not REQUIRED:
            text, default = f"{text}; default {default!r}", None
        annotation = base | None if default is None else base
        option = typer.Option(help=text)
        out.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is REQUIRED else default,
                annotation=Annotated[annotation, option],
            )
        )
    return out


def markdown_table(cls, surfaces: bool = True) -> str:
    """A markdown table of the recipe's parameters: default, allowed values, where offered (the job API,
    the CLI; ``surfaces=False`` for a config file's keys, which has no such column), help."""
    offered_in = {(True, True): "job, CLI", (True, False): "job", (False, True): "CLI"}
    head = "| parameter | default | allowed |" + (" offered |" if surfaces else "") + " what it does |"
    lines = [head, "|---|---|---|" + ("---|" if surfaces else "") + "---|"]
    for name, (p, default) in params_of(cls).items():
        shown = "required" if default is REQUIRED else "unset" if default is None else f"`{default!r}`"
        offered = offered_in.get((p.job, p.cli))
        if surfaces and offered is None:
            continue
        where = f" {offered} |" if surfaces else ""
        lines.append(f"| `{name}` | {shown} | {p.describe() or p.kind} |{where} {p.help} |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def shown(value: Any) -> str:
    """``value`` as an error message shows it: its repr, cut at 60 characters."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
