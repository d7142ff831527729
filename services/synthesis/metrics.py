"""Domain metrics of the synthesis service (served on the REST port's /metrics with BentoML's own)."""

from __future__ import annotations

import bentoml

IMAGES = bentoml.metrics.Counter(
    name="lesionsynth_synthesis_images_total",
    documentation="Images synthesized, by transport (rest, grpc).",
    labelnames=["transport"],
)
SECONDS_PER_IMAGE = bentoml.metrics.Histogram(
    name="lesionsynth_synthesis_seconds_per_image",
    documentation="Wall seconds of sampling per image (a call's time divided by its images).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
STEPS = bentoml.metrics.Histogram(
    name="lesionsynth_synthesis_sampler_steps",
    documentation="DDIM steps requested per image.",
    buckets=(5, 10, 25, 50, 100, 200),
)
UNET_CALLS = bentoml.metrics.Counter(
    name="lesionsynth_synthesis_unet_calls_total",
    documentation="UNet evaluations (one per batch per denoising step).",
)
