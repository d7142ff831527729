"""A LesionInpainter look-alike that paints through the synthesis service, so ``balance --remote``
reuses the whole balancing recipe (plan, resume, manifest) with the sampling done by a server."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.data.images import check_pair, decode_image, encode_png
from models.errors import ConfigError
from services.client.http import SynthesisClient


class RemoteInpainter:
    def __init__(self, client: SynthesisClient, progress: bool = False):
        self.client = client
        self.progress = progress
        self.model_version: str = client.info()["model_version"]

    def inpaint_batch(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        seeds: Sequence[int],
        *,
        steps: int | None = None,
        strength: float | None = None,
        eta: float | None = None,
        resample: int | None = None,
        guidance: float | None = None,
        solver: str | None = None,
    ) -> list[np.ndarray]:
        if eta is not None or resample is not None or guidance is not None or solver is not None:
            raise ConfigError(
                "--solver, --eta, --resample and --guidance are not offered by the synthesis API (the "
                "service samples with its own defaults, reported by /info); leave them unset with --remote"
            )
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            check_pair(image, mask, role=f"pair {i}")
        pairs = [
            (encode_png(image), encode_png(mask.astype(np.uint8) * 255), seed)
            for image, mask, seed in zip(images, masks, seeds, strict=True)
        ]
        replies = self.client.synthesize_many(pairs, steps=steps, strength=strength, progress=self.progress)
        for reply in replies:
            if reply.model_version != self.model_version:
                raise ConfigError(
                    f"the service switched models mid-run ({self.model_version} -> {reply.model_version}); "
                    "rerun into a new --out folder"
                )
        return [decode_image(reply.png) for reply in replies]

    def inpaint(self, image: np.ndarray, mask: np.ndarray, *, seed: int, **settings) -> np.ndarray:
        return self.inpaint_batch([image], [mask], [seed], **settings)[0]
