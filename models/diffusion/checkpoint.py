"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``checkpoints/step-000500/`` holding

    model.safetensors      UNet weights (the raw, non-EMA model being optimised)
    ema.safetensors        EMA shadow weights
    optimizer.safetensors  AdamW moments, flattened as ``state.<param index>.<name>``
    rng.safetensors        the data/noise generator's state (uint8)
    state.json             step, loss curve, optimizer param groups, EMA scalars, run metadata

It is built under a temporary name and renamed into place, so a listed checkpoint is always complete;
:func:`latest_checkpoint` ignores anything else. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from models.artifacts import atomic_write_json

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
    unet: torch.nn.Module,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    metadata: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically; prune older ones beyond ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}, tmp / "model.safetensors"
    )
    ema_state = ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    save_file(
        {f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}, tmp / "ema.safetensors"
    )
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({"state": generator.get_state()}, tmp / "rng.safetensors")
    atomic_write_json(
        tmp / "state.json",
        {"step": step, "ema": ema_state, "optimizer": opt_meta, "metadata": metadata},
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
    path: Path,
    unet: torch.nn.Module,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; return ``state.json`` (step, metadata, ...)."""
    state = json.loads((path / "state.json").read_text())
    unet.load_state_dict(load_file(path / "model.safetensors"))
    shadow = load_file(path / "ema.safetensors")
    ema_state = dict(state["ema"])
    ema_state["shadow_params"] = [shadow[f"shadow.{i}"] for i in range(len(shadow))]
    ema.load_state_dict(ema_state)
    optimizer.load_state_dict(
        _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"])
    )
    generator.set_state(load_file(path / "rng.safetensors")["state"])
    return state
