"""Evaluation of synthetic images: kernel distance (KID) and the feature extractor that feeds it.

``kid`` / ``KernelDistance`` compute the unbiased polynomial-kernel MMD^2 of Binkowski et al. 2018;
``FeatureExtractor`` embeds images with a trained network or a seeded random-init ResNet-18.
"""

from models.evaluation.features import FeatureExtractor
from models.evaluation.kid import KernelDistance, KIDResult, kid, polynomial_kernel

__all__ = ["FeatureExtractor", "KIDResult", "KernelDistance", "kid", "polynomial_kernel"]
