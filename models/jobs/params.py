"""Job parameter checking: each field says its type and range, and every error names the field.

Requests arrive as JSON from the network, so nothing is trusted: unknown fields are refused (a typo such
as ``max_step`` must not silently train with the default), booleans are not integers, integers are not
floats' substitutes, and every path must resolve (symlinks followed) inside the configured roots.
Relative paths are taken relative to the first data root, not the service's working directory, which a
remote client cannot know.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import ParameterError
from models.jobs.base import JobRoots
from models.spec import REQUIRED, Param, check_value, params_of
from models.spec import shown as _shown

_REQUIRED = object()

Check = Callable[[str, Any, JobRoots], Any]


@dataclass(frozen=True)
class Field:
    check: Check
    default: Any = _REQUIRED


def normalise(params: Any, fields: dict[str, Field], roots: JobRoots) -> dict:
    """Check ``params`` against ``fields``; return them with defaults filled in and paths resolved."""
    if not isinstance(params, dict):
        raise ParameterError("params must be a JSON object")
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ParameterError(
            f"params: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(fields)}"
        )
    out = {}
    for name, field in fields.items():
        label = f"params.{name}"
        if name not in params or (params[name] is None and field.default is not _REQUIRED):
            if field.default is _REQUIRED:
                raise ParameterError(f"{label} is required")
            out[name] = field.default
            continue
        out[name] = field.check(label, params[name], roots)
    return out


def fields_of(spec, **overrides: Field) -> dict[str, Field]:
    """The job fields of a recipe spec (models/spec.py): every ``param(job=True)``, checked by the spec's
    own checker; paths must resolve inside the roots, model references are a store version or a folder
    there. ``overrides`` replace or add fields (a job-only input such as balance's store reference)."""
    fields = {}
    for name, (param, default) in params_of(spec).items():
        if not param.job:
            continue
        default = _REQUIRED if default is REQUIRED else default
        if param.kind == "path":
            fields[name] = input_file(default)
        elif param.kind == "model":
            fields[name] = model_ref(default)
        else:
            fields[name] = Field(_spec_check(param), default)
    return {**fields, **overrides}


def _spec_check(param: Param) -> Check:
    def check(label: str, value: Any, roots: JobRoots) -> Any:
        return check_value(param, value, label)

    return check


# -- scalar fields ----------------------------------------------------------------------------------


def integer(lo: int, hi: int, default: Any = _REQUIRED) -> Field:
    """A job-only integer field (a recipe's fields come from its declarations: :func:`fields_of`)."""
    return Field(_spec_check(Param("integer", "", lo, hi)), default)


def choice(options: Sequence[Any], default: Any = _REQUIRED) -> Field:
    """A job-only choice field, checked like a recipe's."""
    return Field(_spec_check(Param("choice", "", choices=tuple(options))), default)


def text(
    pattern: str = r"[^\x00-\x1f]{1,200}", default: Any = _REQUIRED, what: str = "a short text"
) -> Field:
    compiled = re.compile(pattern)

    def check(label: str, value: Any, roots: JobRoots) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ParameterError(f"{label} must be {what}, got {_shown(value)}")
        return value

    return Field(check, default)


# -- paths ------------------------------------------------------------------------------------------


def resolve_input(label: str, value: Any, roots: JobRoots) -> Path:
    """``value`` as a real path inside the readable roots (symlinks followed), else ParameterError."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ParameterError(f"{label} must be a path (a non-empty string), got {_shown(value)}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = roots.data_roots[0] / path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots.readable):
        shown = ", ".join(str(r) for r in roots.data_roots)
        raise ParameterError(
            f"{label}: {value} is outside the data roots ({shown}) and the output root "
            f"({roots.output_root}); jobs may only read there"
        )
    return resolved


def input_file(default: Any = _REQUIRED) -> Field:
    def check(label: str, value: Any, roots: JobRoots) -> str:
        path = resolve_input(label, value, roots)
        if not path.is_file():
            raise ParameterError(f"{label}: no such file: {value}")
        return str(path)

    return Field(check, default)


VERSION = re.compile(r"[0-9a-f]{6,64}")


def model_ref(default: Any = "latest") -> Field:
    """'latest', a model store version (>= 6 hex digits) or a model folder inside the readable roots."""

    def check(label: str, value: Any, roots: JobRoots) -> str:
        if isinstance(value, str) and (value == "latest" or VERSION.fullmatch(value)):
            return value
        path = resolve_input(label, value, roots)
        if not path.is_dir():
            raise ParameterError(f"{label} must be 'latest', a model version or a model folder; got {value}")
        return str(path)

    return Field(check, default)


def output_inside(label: str, path: Path, roots: JobRoots) -> Path:
    """``path`` (resolved) if it is inside the output root, else ParameterError."""
    resolved = path.resolve()
    if not resolved.is_relative_to(roots.output_root):
        raise ParameterError(f"{label}: {path} is outside the output root ({roots.output_root})")
    return resolved
