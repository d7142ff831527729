"""Where training runs, and mixed precision there. Shared by the synthesizer and classifier recipes."""

from __future__ import annotations

import contextlib

import torch


def pick_device(requested: str | None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device):
    """(context factory, GradScaler or None): bf16 autocast on CUDA, fp16 with a GradScaler on GPUs
    without bf16 (e.g. T4, V100), nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def backward_step(
    loss: torch.Tensor, model: torch.nn.Module, optimizer, scaler, clip: float | None = None
) -> None:
    """loss.backward + optional gradient clipping + optimizer.step, through the GradScaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
