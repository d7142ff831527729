"""The imbalance strategies compared by the experiment (paper 000 names weighted loss and weighted
sampling as the comparison still to do; paper 002 warns balancing trades specificity for sensitivity).

A strategy decides three things about training: which rows are in the pool (real only, or real +
synthetic), how an epoch draws from the pool, and the positive-class weight in the loss.

==================  ==============================  ===========================  =====================
strategy            pool                            epoch draws                  loss pos_weight
==================  ==============================  ===========================  =====================
none                real train rows                 each row once, shuffled      1
oversample          real train rows                 positives repeated to match  1
                                                    the negatives (with repl.)
weighted-loss       real train rows                 each row once, shuffled      n_neg / n_pos
weighted-sampler    real train rows                 len(pool) draws with         1
                                                    P(row) ~ 1 / n_class(row)
synthetic           real + synthetic train rows     each row once, shuffled      1
synthetic+weighted  real + synthetic train rows     each row once, shuffled      n_neg / n_pos (after
                                                                                 synthesis)
==================  ==============================  ===========================  =====================

Synthetic rows (``synthetic == 1``, made by ``lesionsynth balance``) are only ever used by the two
synthetic strategies; every other strategy trains on exactly the real rows. A balance run in ``replace``
mode marks the normal rows it converted (``converted == 1``): the synthetic strategies leave them out, so
a converted image is in their pool once, as a lesion (paper 000: 1218 normal -> 918 normal + 300
synthetic), while the other strategies still train on it as the real normal it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a strategy draws: the names above are torch-free
    import torch

STRATEGIES = ("none", "oversample", "weighted-loss", "weighted-sampler", "synthetic", "synthetic+weighted")
#: The strategies that use no synthetic image: the primary comparison may pit a synthetic strategy
#: against the best of these on validation data.
CLASSICAL = ("none", "oversample", "weighted-loss", "weighted-sampler")
#: ``primary.against`` naming the classical strategy with the highest mean val AUC.
BEST_CLASSICAL = "best-classical"


@dataclass(frozen=True)
class Strategy:
    name: str

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(f"unknown --balance {self.name!r}; choose one of {', '.join(STRATEGIES)}")

    @property
    def uses_synthetic(self) -> bool:
        return self.name.startswith("synthetic")

    def drops_row(self, fields: dict[str, str]) -> bool:
        """A normal row that a ``replace``-mode balance converted into a synthetic lesion."""
        return self.uses_synthetic and fields.get("converted", "0") == "1"

    def pool_mask(self, synthetic: torch.Tensor) -> torch.Tensor:
        """(N,) bool: which train rows are in the pool."""
        import torch

        return torch.ones_like(synthetic) if self.uses_synthetic else ~synthetic

    def pos_weight(self, labels: torch.Tensor) -> float:
        """Loss weight of the positive class for pool labels (N,) in {0, 1}."""
        if self.name not in ("weighted-loss", "synthetic+weighted"):
            return 1.0
        n_pos = float(labels.sum())
        return (len(labels) - n_pos) / max(n_pos, 1.0)

    def epoch_indices(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Indices into the pool for one epoch (pool labels (N,) in {0, 1})."""
        import torch

        n = len(labels)
        if n == 0:
            raise ConfigError("no training rows for this strategy")
        if labels.min() == labels.max():
            raise ConfigError("the training rows hold only one class; a screening classifier needs both")
        if self.name == "oversample":
            pos = torch.nonzero(labels == 1).flatten()
            neg = torch.nonzero(labels == 0).flatten()
            minority, majority = (pos, neg) if len(pos) < len(neg) else (neg, pos)
            extra = minority[
                torch.randint(0, len(minority), (len(majority) - len(minority),), generator=generator)
            ]
            idx = torch.cat([majority, minority, extra])
            return idx[torch.randperm(len(idx), generator=generator)]
        if self.name == "weighted-sampler":
            counts = torch.bincount(labels.long(), minlength=2).float()
            weights = 1.0 / counts[labels.long()]
            return torch.multinomial(weights, n, replacement=True, generator=generator)
        return torch.randperm(n, generator=generator)
