"""What the REST and gRPC adapters of the synthesis service share: parse, synthesize, encode.

The ML is ``models.diffusion.inpaint.LesionInpainter``; this module turns request bytes into checked
arrays (every problem a LesionsynthError naming the field), runs pairs through the inpainter under one
lock (the inpainter is not thread-safe; REST batching and gRPC threads share it), and records metrics.
Pairs with the same sampler settings are sampled in one UNet batch.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

import numpy as np

from models.artifacts import sha256_bytes
from models.audit import AuditEntry, default_beside, open_audit_log, token_id
from models.data.images import check_pair, decode_image, decode_mask, encode_png
from models.diffusion.sampler_settings import DEFAULTS, MAX_SEED, MAX_STEPS, check_seed
from models.errors import ConfigError, ParameterError
from models.provenance import Provenance
from services.common.metrics import set_model
from services.common.model_slot import ModelSlot
from services.common.settings import CommonSettings
from services.synthesis import metrics
from services.synthesis.settings import SynthesisSettings

if TYPE_CHECKING:
    from models.diffusion.inpaint import LesionInpainter


@dataclass
class SynthesisTask:
    """One checked pair: image (H, W, 3) uint8, mask (H, W) bool, and resolved sampler settings."""

    image: np.ndarray
    mask: np.ndarray
    seed: int
    steps: int
    strength: float
    #: sha256 of the request's image and mask bytes: the provenance and the audit log (never the bytes).
    image_sha256: str = ""
    mask_sha256: str = ""


@dataclass
class SynthesisResult:
    png: bytes
    seed: int
    steps: int
    strength: float
    model_version: str


def parse_task(
    image: bytes,
    mask: bytes,
    seed: int | None,
    steps: int | None,
    strength: float | None,
    limits: CommonSettings,
    role: str = "",
) -> SynthesisTask:
    """Decode and check one request; raise InvalidImageError / InvalidMaskError / ParameterError."""
    prefix = f"{role}." if role else ""
    if not image:
        raise ParameterError(f"{prefix}image is missing (empty)")
    if not mask:
        raise ParameterError(f"{prefix}mask is missing (empty)")
    settings = DEFAULTS.with_overrides(steps=steps, strength=strength)
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    check_seed(seed)
    sizes = {"max_pixels": limits.max_pixels, "min_side": limits.min_image_side}
    img = decode_image(image, **sizes, role=f"{prefix}image")
    msk = decode_mask(mask, **sizes, role=f"{prefix}mask")
    check_pair(img, msk, role=role)
    hashes = (sha256_bytes(image), sha256_bytes(mask) if mask else "")
    return SynthesisTask(img, msk, seed, settings.steps, float(settings.strength), *hashes)


class SynthesisHandler:
    def __init__(self, settings: SynthesisSettings):
        import torch

        from models.diffusion.inpaint import LesionInpainter  # torch: in the worker, not at import

        self.settings = settings
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            # Said in one line before the model load would fail deep inside torch with a traceback.
            raise ConfigError(
                f"LESIONSYNTH_DEVICE={device} but torch sees no CUDA device (no GPU, driver or CUDA build "
                "here): run on a GPU node, or set LESIONSYNTH_DEVICE=cpu or auto"
            )
        self.device = device
        self._lock = threading.Lock()
        self.slot = ModelSlot(
            "synthesizer",
            settings.model,
            settings.model_store,
            load=lambda path: LesionInpainter.from_pretrained(
                path, device=device, verify=True, batch_size=settings.unet_batch_size
            ),
            version_of=lambda inpainter: inpainter.model_version,
            on_swap=lambda inpainter: set_model("synthesis", inpainter.model_version),
        )
        self.slot.watch(settings.reload_interval_s)
        # Every synthesis is recorded (models/audit.py): LESIONSYNTH_AUDIT_DB, else beside the model store.
        self.audit = open_audit_log(default_beside(settings.model_store))
        #: The actor of every request that passed auth: the one configured token's id ("anonymous": no auth).
        self.actor = token_id(settings.common.api_token)

    @property
    def inpainter(self) -> LesionInpainter:
        return self.slot.model

    def info(self) -> dict:
        common = self.settings.common
        return {
            "model_version": self.inpainter.model_version,
            "resolution": self.inpainter.resolution,
            "default_steps": DEFAULTS.steps,
            "default_strength": DEFAULTS.strength,
            "max_steps": MAX_STEPS,
            "max_pixels": common.max_pixels,
            "max_request_bytes": common.max_request_bytes,
            "max_batch_items": common.max_batch_items,
        }

    def run(
        self, tasks: list[SynthesisTask], transport: str, actor: str | None = None
    ) -> list[SynthesisResult]:
        """Synthesize every task (in input order); same-settings tasks share UNet batches. Each PNG carries
        its provenance and is recorded in the audit log under ``actor`` (default: :attr:`actor`)."""
        results: list[SynthesisResult | None] = [None] * len(tasks)
        entries: list[AuditEntry] = []
        order = sorted(range(len(tasks)), key=lambda i: (tasks[i].steps, tasks[i].strength))
        for (steps, strength), group in groupby(order, key=lambda i: (tasks[i].steps, tasks[i].strength)):
            idx = list(group)
            with self._lock:
                inpainter = self.inpainter
                calls_before = inpainter.unet_calls
                started = time.perf_counter()
                images = inpainter.inpaint_batch(
                    [tasks[i].image for i in idx],
                    [tasks[i].mask for i in idx],
                    [tasks[i].seed for i in idx],
                    steps=steps,
                    strength=strength,
                )
                seconds = time.perf_counter() - started
                metrics.UNET_CALLS.inc(inpainter.unet_calls - calls_before)
            for i, image in zip(idx, images, strict=True):
                metrics.SECONDS_PER_IMAGE.observe(seconds / len(idx))
                metrics.STEPS.observe(steps)
                task, version = tasks[i], inpainter.model_version
                png = encode_png(image, provenance=Provenance(version, task.seed, task.image_sha256))
                results[i] = SynthesisResult(png, task.seed, steps, strength, version)
                entries.append(
                    AuditEntry.new(
                        actor=actor or self.actor,
                        source=transport,
                        model_version=version,
                        seed=task.seed,
                        image_sha256=task.image_sha256,
                        mask_sha256=task.mask_sha256,
                        output_sha256=sha256_bytes(png),
                    )
                )
            metrics.IMAGES.labels(transport=transport).inc(len(idx))
        if self.audit is not None:
            self.audit.record(entries)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.slot.close()
