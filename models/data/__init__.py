"""Datasets: safe image decoding, CSV manifests, splits, lesion regions and the demo data generator."""
