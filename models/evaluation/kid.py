"""Kernel distance (KID) between two sets of feature vectors.

The Kernel Inception Distance of Binkowski et al. 2018 ("Demystifying MMD GANs", ICLR) is the unbiased
squared maximum mean discrepancy (MMD^2) between real and generated feature vectors under the cubic
polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``, averaged over random subsets. Paper 001 of this
project judges synthetic colonoscopy images with it.

lesionsynth's features are usually *not* Inception-v3 features (no pretrained weights can be downloaded;
see :mod:`models.evaluation.features`), so the class is called :class:`KernelDistance`. Values are only
comparable between runs that used the same feature extractor; record its ``name`` next to every number.

Style follows MONAI metrics: a pure function (:func:`kid`) and a thin accumulating class
(:class:`KernelDistance`) with ``update`` / ``compute`` / ``reset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["KIDResult", "KernelDistance", "kid", "polynomial_kernel"]

#: Above this many feature vectors in total, kernels are computed per subset instead of once for all.
_FULL_KERNEL_MAX = 4000

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class KIDResult:
    """Mean and standard deviation (ddof=0) of the per-subset unbiased MMD^2 estimates, and their 2.5 and
    97.5 percentiles (``low``, ``high``): with subsets of half the smaller set, a subsampling interval that
    is wider than the full-sample estimate's own 95% CI (conservative), since a subset sees half the data."""

    mean: float
    std: float
    n_subsets: int
    subset_size: int
    low: float = float("nan")
    high: float = float("nan")

    def __str__(self) -> str:
        return f"KID {self.mean:.6g} +- {self.std:.3g} ({self.n_subsets} subsets of {self.subset_size})"


def polynomial_kernel(
    x: ArrayLike, y: ArrayLike, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> ArrayLike:
    """Polynomial kernel ``K[i, j] = (gamma * x_i . y_j + coef0) ** degree``.

    Args:
        x: (n, d) features, numpy array or torch tensor (float64 recommended).
        y: (m, d) features of the same type as ``x``.
        degree: polynomial degree (3 for KID).
        gamma: scale of the dot product; ``None`` means ``1 / d`` (as in KID).
        coef0: additive constant (1 for KID).

    Returns:
        (n, m) kernel matrix, a numpy array for numpy inputs and a tensor for tensor inputs.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"polynomial_kernel needs (n, d) and (m, d) inputs, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    g = 1.0 / x.shape[1] if gamma is None else float(gamma)
    return (x @ y.T * g + coef0) ** degree


def _as_features(value: ArrayLike, role: str) -> np.ndarray:
    """Convert one feature set to a finite float64 (n, d) numpy array, or raise ValueError."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{role} features must be a 2-D array (n_samples, n_features), got shape {arr.shape}"
        )
    if arr.shape[0] < 2:
        raise ValueError(
            f"{role} features need at least 2 samples for an unbiased MMD estimate, got {arr.shape[0]}"
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{role} features have no dimensions (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{role} features contain NaN or inf values ({int((~np.isfinite(arr)).sum())} "
            f"entries); check the feature extractor and the input images"
        )
    return arr


def _unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from the (m, m), (m, m) and (m, m) kernel blocks of one subset."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.mean())


def kid(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    *,
    subset_size: int | None = None,
    n_subsets: int = 100,
    seed: int = 0,
) -> KIDResult:
    """Kernel distance (KID) between real and fake features, averaged over random subsets.

    For each subset, ``m = subset_size`` rows ``x_1..x_m`` of ``real_features`` and ``y_1..y_m`` of
    ``fake_features`` are drawn without replacement (independently for the two sets) and the unbiased
    estimator

        MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1))
              + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 * sum_{i, j} k(x_i, y_j) / m^2

    is computed with ``k(x, y) = (x . y / d + 1) ** 3``. The result holds the mean and the standard
    deviation (ddof=0) over subsets. The estimate is unbiased, so it can be slightly negative when the
    two distributions are equal; passing the *same* array twice gives a small negative value of order
    ``1 / n`` because the cross term then includes ``k(x_i, x_i)``.

    Args:
        real_features: (n_real, d) features of real images (numpy or torch).
        fake_features: (n_fake, d) features of generated images.
        subset_size: rows per subset; default ``min(1000, n_real, n_fake)`` so sets of tens of images
            work. With ``subset_size == n_real == n_fake`` every subset is the whole set (exact value).
        n_subsets: number of random subsets (>= 1).
        seed: seed of the subset sampler; equal inputs and seed give identical results.

    Returns:
        :class:`KIDResult` with ``mean``, ``std``, ``n_subsets`` and ``subset_size``.

    Raises:
        ValueError: fewer than 2 samples in either set, different feature dimensions, NaN/inf values,
            or a ``subset_size`` / ``n_subsets`` out of range.
    """
    x = _as_features(real_features, "real")
    y = _as_features(fake_features, "fake")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"real and fake features have different dimensions: {x.shape[1]} vs {y.shape[1]}; "
            f"extract both with the same feature extractor"
        )
    n_x, n_y = x.shape[0], y.shape[0]
    largest = min(n_x, n_y)
    m = min(1000, largest) if subset_size is None else int(subset_size)
    if not 2 <= m <= largest:
        raise ValueError(f"subset_size must be between 2 and min(n_real, n_fake) = {largest}, got {m}")
    if int(n_subsets) < 1:
        raise ValueError(f"n_subsets must be at least 1, got {n_subsets}")
    n_subsets = int(n_subsets)

    rng = np.random.default_rng(seed)
    full = n_x + n_y <= _FULL_KERNEL_MAX
    if full:  # compute each kernel once and index into it: n_subsets times cheaper than per subset
        kxx_all, kyy_all, kxy_all = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    values = np.empty(n_subsets, dtype=np.float64)
    for s in range(n_subsets):
        ix = rng.choice(n_x, size=m, replace=False)
        iy = rng.choice(n_y, size=m, replace=False)
        if full:
            blocks = kxx_all[np.ix_(ix, ix)], kyy_all[np.ix_(iy, iy)], kxy_all[np.ix_(ix, iy)]
        else:
            xs, ys = x[ix], y[iy]
            blocks = polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys)
        values[s] = _unbiased_mmd2(*blocks)
    low, high = np.percentile(values, [2.5, 97.5])
    return KIDResult(
        mean=float(values.mean()),
        std=float(values.std()),
        n_subsets=n_subsets,
        subset_size=m,
        low=float(low),
        high=float(high),
    )


class KernelDistance:
    """Accumulating KID metric: ``update`` with feature batches, then ``compute``.

    Named ``KernelDistance`` rather than ``KernelInceptionDistance`` because lesionsynth's features come
    from :class:`models.evaluation.features.FeatureExtractor`, not from Inception-v3.

    Example::

        metric = KernelDistance(n_subsets=50)
        for real_batch, fake_batch in batches:          # each (b, d)
            metric.update(real=real_batch, fake=fake_batch)
        result = metric.compute()                        # KIDResult
    """

    def __init__(self, subset_size: int | None = None, n_subsets: int = 100, seed: int = 0) -> None:
        self.subset_size = subset_size
        self.n_subsets = n_subsets
        self.seed = seed
        self._real: list[np.ndarray] = []
        self._fake: list[np.ndarray] = []

    @staticmethod
    def _batch(value: ArrayLike, role: str) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double().numpy()
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(
                f"{role} batch must be (batch, n_features) or (n_features,), got shape {arr.shape}"
            )
        return arr.copy()

    def update(self, real: ArrayLike | None = None, fake: ArrayLike | None = None) -> None:
        """Add a (b, d) batch of real and/or fake features (a (d,) vector counts as one row)."""
        if real is None and fake is None:
            raise ValueError("update() needs real=..., fake=... or both")
        if real is not None:
            self._real.append(self._batch(real, "real"))
        if fake is not None:
            self._fake.append(self._batch(fake, "fake"))

    def compute(self) -> KIDResult:
        """KID of everything added since the last :meth:`reset` (see :func:`kid`)."""
        if not self._real or not self._fake:
            raise ValueError(
                "KernelDistance.compute() needs both real and fake features; call update() first"
            )
        for role, parts in (("real", self._real), ("fake", self._fake)):
            if len({p.shape[1] for p in parts}) > 1:
                raise ValueError(
                    f"{role} batches have different feature dimensions: {sorted({p.shape[1] for p in parts})}"
                )
        return kid(
            np.concatenate(self._real),
            np.concatenate(self._fake),
            subset_size=self.subset_size,
            n_subsets=self.n_subsets,
            seed=self.seed,
        )

    def reset(self) -> None:
        """Forget all accumulated features."""
        self._real.clear()
        self._fake.clear()
