"""Tests for the kernel distance (KID) and the feature extractor that feeds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.evaluation import FeatureExtractor, KernelDistance, KIDResult, kid, polynomial_kernel


def _gauss(seed: int, n: int = 200, d: int = 16, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def _brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """O(n^2) loop version of the unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3 (equal sizes)."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2.0 * xy


# ---------------------------------------------------------------- kernel and estimator


def test_polynomial_kernel_numpy_and_torch_agree() -> None:
    x, y = _gauss(0, 5, 4), _gauss(1, 3, 4)
    k = polynomial_kernel(x, y)
    assert k.shape == (5, 3)
    assert k[2, 1] == pytest.approx((x[2] @ y[1] / 4 + 1) ** 3)
    kt = polynomial_kernel(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(kt, torch.Tensor)
    np.testing.assert_allclose(kt.numpy(), k, rtol=1e-12)
    assert polynomial_kernel(x, y, degree=1, gamma=1.0, coef0=0.0)[0, 0] == pytest.approx(x[0] @ y[0])


def test_matches_brute_force_reference_when_subset_is_whole_set() -> None:
    x, y = _gauss(0, 12, 5), _gauss(1, 12, 5, shift=0.3)
    result = kid(x, y, subset_size=12, n_subsets=3)
    assert result.mean == pytest.approx(_brute_force_mmd2(x, y), rel=1e-10, abs=1e-12)
    assert result.std < 1e-10  # every subset is a permutation of the whole set
    assert (result.subset_size, result.n_subsets) == (12, 3)


def test_identical_features_give_near_zero() -> None:
    x = _gauss(0, n=400)
    same = kid(x, x, subset_size=400, n_subsets=1).mean
    shifted = kid(x, x + 1.0, subset_size=400, n_subsets=1).mean
    # Passing the same set twice is not two independent samples: the cross term includes k(x_i, x_i),
    # so the unbiased estimate is exactly -2 (mean diag - mean off-diag) / n, small and negative.
    k = polynomial_kernel(x, x)
    off_diag = (k.sum() - np.trace(k)) / (400 * 399)
    assert same == pytest.approx(-2.0 * (np.diag(k).mean() - off_diag) / 400, rel=1e-9)
    assert abs(same) < 0.01 * shifted
    assert abs(kid(x, x).mean) < 0.01 * shifted  # random subsets too


def test_same_distribution_near_zero_and_shift_monotone() -> None:
    x = _gauss(0)
    values = [kid(x, _gauss(1, shift=s), n_subsets=20).mean for s in (0.0, 0.25, 0.5, 1.0)]
    assert abs(values[0]) < 0.1 * values[1]
    assert values[0] < values[1] < values[2] < values[3]
    assert values[1] > 0.1


def test_default_subset_size_and_small_sets() -> None:
    result = kid(_gauss(0, n=30), _gauss(1, n=17), n_subsets=5)
    assert isinstance(result, KIDResult)
    assert result.subset_size == 17 and result.n_subsets == 5
    assert np.isfinite(result.mean) and result.std >= 0.0
    assert kid(_gauss(0, n=2), _gauss(1, n=2)).subset_size == 2


def test_deterministic_for_a_seed() -> None:
    x, y = _gauss(0, n=120), _gauss(1, n=150, shift=0.2)
    a = kid(x, y, subset_size=50, n_subsets=10, seed=3)
    b = kid(x, y, subset_size=50, n_subsets=10, seed=3)
    c = kid(x, y, subset_size=50, n_subsets=10, seed=4)
    assert a == b
    assert a.mean != c.mean
    assert a.std > 0.0


def test_torch_inputs_equal_numpy_inputs() -> None:
    x, y = _gauss(0, n=40), _gauss(1, n=40, shift=0.5)
    assert kid(torch.from_numpy(x).float(), torch.from_numpy(y).float()).mean == pytest.approx(
        kid(x.astype(np.float32), y.astype(np.float32)).mean, rel=1e-9
    )


@pytest.mark.parametrize(
    ("real", "fake", "kwargs", "match"),
    [
        (np.zeros((1, 4)), np.zeros((5, 4)), {}, "real features need at least 2 samples"),
        (np.zeros((5, 4)), np.zeros((1, 4)), {}, "fake features need at least 2 samples"),
        (np.zeros((5, 4)), np.zeros((5, 3)), {}, "different dimensions: 4 vs 3"),
        (np.full((5, 4), np.nan), np.zeros((5, 4)), {}, "real features contain NaN or inf"),
        (np.zeros((5, 4)), np.array([[np.inf] * 4] * 5), {}, "fake features contain NaN or inf"),
        (np.zeros(5), np.zeros((5, 4)), {}, "must be a 2-D array"),
        (np.zeros((5, 4)), np.zeros((6, 4)), {"subset_size": 6}, "subset_size must be between 2 and"),
        (np.zeros((5, 4)), np.zeros((6, 4)), {"n_subsets": 0}, "n_subsets must be at least 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(real: np.ndarray, fake: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kid(real, fake, **kwargs)


def test_class_update_compute_equals_function_on_concatenation() -> None:
    x, y = _gauss(0, n=90), _gauss(1, n=70, shift=0.3)
    metric = KernelDistance(subset_size=40, n_subsets=7, seed=2)
    with pytest.raises(ValueError, match="needs both real and fake"):
        metric.compute()
    for start in range(0, 90, 25):
        metric.update(real=x[start : start + 25])
    metric.update(fake=torch.from_numpy(y[:30]))
    metric.update(fake=y[30:])
    assert metric.compute() == kid(x, y, subset_size=40, n_subsets=7, seed=2)
    metric.reset()
    with pytest.raises(ValueError, match="needs both real and fake"):
        metric.compute()
    metric.update(real=x[:50], fake=y[:45])
    assert metric.compute() == kid(x[:50], y[:45], subset_size=40, n_subsets=7, seed=2)
    metric.update(real=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="different feature dimensions"):
        metric.compute()


# ---------------------------------------------------------------- feature extractor


def _flat_images(rng: np.random.Generator, n: int, size: int = 40) -> np.ndarray:
    """Flat background colour with three flat-coloured rectangles."""
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        out[k] = rng.integers(0, 256, 3)
        for _ in range(3):
            r0, r1 = sorted(rng.integers(0, size, 2))
            c0, c1 = sorted(rng.integers(0, size, 2))
            out[k, r0 : r1 + 1, c0 : c1 + 1] = rng.integers(0, 256, 3)
    return out


def _noisy_images(rng: np.random.Generator, n: int, size: int = 40) -> np.ndarray:
    """Per-pixel Gaussian noise around a random mid-range colour."""
    base = rng.integers(64, 192, (n, 1, 1, 3))
    return np.clip(base + rng.normal(0.0, 60.0, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_feature_extractor_shape_name_and_determinism() -> None:
    images = _noisy_images(np.random.default_rng(0), 5)
    state = torch.random.get_rng_state()
    a, b = FeatureExtractor(seed=0), FeatureExtractor(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    fa = a(images)
    assert fa.shape == (5, 512) and fa.dtype == np.float64
    assert np.isfinite(fa).all()
    np.testing.assert_array_equal(fa, b(images))
    # float32 convolutions round differently per batch size: equal up to rounding, not bit for bit
    np.testing.assert_allclose(FeatureExtractor(seed=0, batch_size=2)(images), fa, rtol=1e-4, atol=1e-5)
    assert a.name == "resnet18-random-init-seed0@64px"
    other = FeatureExtractor(seed=1)
    assert other.name == "resnet18-random-init-seed1@64px"
    assert not np.allclose(fa, other(images))


def test_feature_extractor_accepts_mixed_sizes_and_grayscale() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape).astype(np.uint8) for shape in [(20, 30, 3), (64, 64, 3), (100, 50)]]
    feats = FeatureExtractor(image_size=32)(images)
    assert feats.shape == (3, 512)
    assert not np.allclose(feats[0], feats[1])


def test_feature_extractor_rejects_bad_images() -> None:
    fe = FeatureExtractor(image_size=32)
    with pytest.raises(ValueError, match="uint8"):
        fe(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        fe([np.zeros((16, 16, 4), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        fe([])


def test_feature_extractor_custom_backbone() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())  # (N, 8, S, S) -> pooled (N, 8)
    backbone.train()
    fe = FeatureExtractor(backbone, image_size=16, name="tiny-cnn")
    assert not backbone.training and fe.name == "tiny-cnn"
    assert FeatureExtractor(backbone, image_size=16).name == "Sequential-custom@16px"
    feats = fe(_flat_images(np.random.default_rng(0), 4))
    assert feats.shape == (4, 8) and feats.dtype == np.float64


def test_kid_separates_flat_from_noisy_images() -> None:
    rng = np.random.default_rng(0)
    fe = FeatureExtractor(seed=0)
    flat, noisy = fe(_flat_images(rng, 128)), fe(_noisy_images(rng, 128))
    within = max(kid(flat[:64], flat[64:]).mean, kid(noisy[:64], noisy[64:]).mean)
    between = kid(flat[:64], noisy[64:]).mean
    assert between > 3.0 * max(within, 1e-4)


def test_fidelity_scores_are_scale_free_and_order_the_classes():
    from models.evaluation.fidelity import fidelity_scores

    rng = np.random.default_rng(0)
    lesion = rng.normal(3.0, 1.0, (60, 16))
    normal = rng.normal(0.0, 1.0, (60, 16))
    synthetic_like_lesion = rng.normal(3.0, 1.0, (60, 16))
    a = fidelity_scores(synthetic_like_lesion, lesion, normal)
    b = fidelity_scores(1000 * synthetic_like_lesion, 1000 * lesion, 1000 * normal)
    assert a["kid_synthetic_vs_real_lesion"]["mean"] == pytest.approx(
        b["kid_synthetic_vs_real_lesion"]["mean"], abs=1e-9
    )
    assert a["kid_synthetic_vs_real_lesion"]["mean"] < 0.1 * a["kid_synthetic_vs_real_normal"]["mean"]
