"""Data-parallel training over several processes (``torchrun``): one process per GPU.

``torchrun --nproc-per-node N`` starts N copies of a recipe with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :meth:`DataParallel.from_env` reads them. In a
plain ``python`` run they are absent, the context is one process and every method below is a no-op, so
a recipe has a single code path.

The contract a recipe keeps with it (models/diffusion/train.py does):

- every rank builds the same initial weights (same seed; DDP also broadcasts rank 0's at wrap time) and
  draws its own batches and noise from its own generator (:meth:`DataParallel.rank_seed`), so the
  global batch is ``WORLD_SIZE x batch_size`` distinct samples;
- DDP averages the gradients, so the weights and the EMA stay identical on every rank: only rank 0
  writes checkpoints and models (:attr:`DataParallel.is_main`);
- collectives (:meth:`mean`, :meth:`gather`, :meth:`barrier`) are called by every rank at the same
  points, or the run hangs until the NCCL/gloo timeout.

Backends: NCCL between GPUs, gloo on the CPU (how the tests run it here: 2 processes on 2 cores).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from models.devices import pick_device
from models.errors import ConfigError

#: How long a collective waits for a rank that died or hangs before the run fails (torch's default is
#: 10 min for NCCL; a checkpoint write on slow storage can take minutes on rank 0 while the others wait).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DataParallel:
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise ConfigError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ConfigError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        """The requested device; on CUDA with several ranks, this rank's GPU (``cuda:LOCAL_RANK``)."""
        device = pick_device(requested)
        if self.enabled and device.type == "cuda":
            if requested not in (None, "cuda"):
                raise ConfigError(
                    f"with several processes the device is 'cuda' (one GPU each), not {requested!r}"
                )
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    @contextlib.contextmanager
    def session(self, device: torch.device) -> Iterator[DataParallel]:
        """The process group for the run (NCCL on CUDA, gloo on the CPU); torn down however it ends."""
        if not self.enabled:
            yield self
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        try:
            yield self
        finally:
            dist.destroy_process_group()

    def rank_seed(self, seed: int) -> int:
        """This rank's data/noise seed: ``seed`` itself on rank 0 (a one-process run is unchanged), an
        independent stream per other rank (numpy's SeedSequence spawn keys: no overlap between ranks)."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence(seed, spawn_key=(self.rank,)).generate_state(1, np.uint64)[0] >> 1)

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over ranks), or as it is."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over ranks (e.g. the logged loss)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def gather(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape and dtype on all), stacked: ``[world_size, *tensor.shape]``,
        on the CPU. Used for the generator states a checkpoint needs to resume each rank exactly."""
        if not self.enabled:
            return tensor.unsqueeze(0).cpu()
        local = tensor.to(device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.stack([p.cpu() for p in parts])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
