"""Clinical relevance of synthetic images (paper 001): KID against each real class and a t-SNE map.

Paper 001 found synthetic polyps that looked right but sat with the wrong class in feature space, and
hurt the classifier. So a synthetic lesion set is scored twice, on the features of a classifier trained
here on real data only (the ``none`` strategy; no Inception weights can be downloaded):

* KID(synthetic lesion, real lesion): lower is better (it looks like the class it claims);
* KID(synthetic lesion, real normal): higher is better (it does not look like the class it came from);

and drawn with the real classes in a t-SNE map (scikit-learn).

Shapes: features (N, D) float64.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from models.classifier.data import preprocess
from models.classifier.folder import LoadedClassifier
from models.evaluation.features import resnet_pooled
from models.evaluation.kid import kid


def classifier_features(
    model: LoadedClassifier, images: Sequence[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """Penultimate (global-average-pooled) features of a torchvision ResNet classifier: (N, D)."""
    device = next(model.net.parameters()).device
    batches = (
        preprocess(images[i : i + batch_size], model.config).to(device)
        for i in range(0, len(images), batch_size)
    )
    return resnet_pooled(model.net, batches)[0].numpy()


def reference_scale(*reference: np.ndarray) -> float:
    """RMS of the real reference features: dividing every set by it keeps x . y / d near 1.

    The cubic kernel (x . y / d + 1)^3 was designed for Inception pool features (values ~0-2). Penultimate
    features of a ResNet trained here from scratch can be 100x larger, and then the cubed dot products
    dominate everything and the estimator's variance explodes (seen on PH2: KID ~1e5 +- 2e5). One common
    scalar for all sets keeps the geometry and makes values comparable across checkpoints of a run.
    """
    stacked = np.concatenate(reference)
    return float(np.sqrt(np.mean(stacked**2))) or 1.0


def fidelity_scores(
    synthetic: np.ndarray, real_lesion: np.ndarray, real_normal: np.ndarray, seed: int = 0
) -> dict:
    """KID of the synthetic lesions against each real class, on features divided by
    :func:`reference_scale` of the real sets.

    Subsets hold half of the smaller set, so both sets vary between subsets and the subset percentiles
    give a (conservative) 95% interval; "class-anchored" means the two intervals do not overlap, with KID
    against normals above KID against lesions.
    """
    scale = reference_scale(real_lesion, real_normal)
    synthetic, real_lesion, real_normal = synthetic / scale, real_lesion / scale, real_normal / scale

    def half(a: np.ndarray, b: np.ndarray) -> int:
        return max(2, min(len(a), len(b)) // 2)

    to_lesion = kid(
        synthetic, real_lesion, subset_size=half(synthetic, real_lesion), n_subsets=200, seed=seed
    )
    to_normal = kid(
        synthetic, real_normal, subset_size=half(synthetic, real_normal), n_subsets=200, seed=seed
    )
    result = {
        name: {
            "mean": r.mean,
            "std": r.std,
            "ci95": [r.low, r.high],
            "subset_size": r.subset_size,
        }
        for name, r in (
            ("kid_synthetic_vs_real_lesion", to_lesion),
            ("kid_synthetic_vs_real_normal", to_normal),
        )
    }
    return {
        **result,
        "class_anchored": bool(to_normal.low > to_lesion.high),
        "n": {"synthetic": len(synthetic), "real_lesion": len(real_lesion), "real_normal": len(real_normal)},
        "feature_scale": scale,
    }


def tsne_figure(groups: Mapping[str, np.ndarray], title: str, seed: int = 0) -> bytes:
    """A t-SNE map of feature groups (name -> (N_i, D)) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    names = list(groups)
    stacked = np.concatenate([groups[n] for n in names])
    perplexity = float(min(30, max(5, (len(stacked) - 1) // 3)))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        stacked
    )
    fig, ax = plt.subplots(figsize=(6, 5.5))
    start = 0
    markers = {"real": "o", "synthetic": "x"}
    for name in names:
        n = len(groups[name])
        marker = markers["synthetic"] if "synthetic" in name else markers["real"]
        ax.scatter(
            embedded[start : start + n, 0],
            embedded[start : start + n, 1],
            s=14,
            marker=marker,
            label=f"{name} ({n})",
            alpha=0.75,
        )
        start += n
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
