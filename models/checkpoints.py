"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``<root>/step-000500/`` holding

    <group>.safetensors    one file per named tensor group (e.g. ``model``, ``ema``)
    optimizer.safetensors  the optimizer's tensors, flattened as ``state.<param index>.<name>``
    rng.safetensors        the data/noise generator's state (uint8)
    state.json             the caller's JSON state + optimizer param groups and scalars

It is built under a temporary name and renamed into place, so a listed checkpoint is always complete;
:func:`latest_checkpoint` ignores anything else. Only the newest ``keep`` checkpoints are kept.
Used by the synthesizer (``model`` + ``ema``) and the classifier (``model`` + ``best``) recipes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.artifacts import atomic_write_json, storage_guard
from models.errors import ConfigError

_NAME = re.compile(r"^step-(\d{6,})$")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            name = f"state.{idx}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict,
    keep: int = 2,
) -> Path:
    """Write ``root/step-<step>`` atomically; prune older checkpoints beyond ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with storage_guard(f"checkpoint step {step}", cleanup=tmp):
        for group, values in tensors.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in values.items()}, tmp / f"{group}.safetensors"
            )
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file({"state": generator.get_state()}, tmp / "rng.safetensors")
        atomic_write_json(
            tmp / "state.json", {"step": step, "groups": sorted(tensors), "optimizer": opt_meta, **state}
        )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Restore the optimizer and generator in place; return (tensor groups, JSON state)."""
    state = json.loads((path / "state.json").read_text())
    tensors = {group: load_file(path / f"{group}.safetensors") for group in state["groups"]}
    optimizer.load_state_dict(
        _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"])
    )
    generator.set_state(load_file(path / "rng.safetensors")["state"])
    return tensors, state


def require_resume_for_existing_run(out: Path, finished_marker: str, resume: bool) -> None:
    """A training recipe never silently overwrites a folder that holds a run (checkpoints or a finished
    model): the user must say ``--resume`` or pick a new folder."""
    if not resume and (latest_checkpoint(out / "checkpoints") or (out / finished_marker).exists()):
        raise ConfigError(
            f"{out} already holds a training run; pass --resume to continue it or choose a new --out"
        )
