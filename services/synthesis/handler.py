"""What the REST and gRPC adapters of the synthesis service share: parse, synthesize, encode (PNG; DICOM
+ SEG for a DICOM task, parse_dicom_task).

The ML is ``models.diffusion.inpaint.LesionInpainter``; this module turns request bytes into checked
arrays (every problem a LesionsynthError naming the field), runs pairs through the inpainter under one
lock (the inpainter is not thread-safe; REST batching and gRPC threads share it), and records metrics.
Pairs with the same sampler settings are sampled in one UNet batch. A request without a mask gets a
proposal (models/masks/: a shape of the synthesizer's shape bank placed in tissue), returned with it.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

import numpy as np

from models.artifacts import sha256_bytes
from models.audit import AuditEntry, default_beside, open_audit_log, token_id
from models.data.images import check_pair, decode_image, decode_mask, encode_png
from models.diffusion.sampler_settings import DEFAULTS, MAX_SEED, MAX_STEPS, check_seed
from models.errors import ConfigError, InvalidImageError, ModelFolderError, ParameterError
from models.masks import ShapeBank, find_bank, load_bank, propose_mask
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
    mask: np.ndarray | None  # None: propose one (SynthesisHandler.run), returned in the result
    seed: int
    steps: int
    strength: float
    #: sha256 of the request's image and mask bytes: the provenance and the audit log (never the bytes).
    image_sha256: str = ""
    mask_sha256: str = ""
    #: The proposed mask's PNG (0/255) when the request had no mask (SynthesisHandler.fill).
    proposed_png: bytes | None = None
    #: The source's DICOM header (a pydicom Dataset, pixel data dropped) when the result is wanted as
    #: DICOM (parse_dicom_task): the synthetic image becomes a new series in that study.
    dicom_source: Any = None


@dataclass
class SynthesisResult:
    png: bytes
    seed: int
    steps: int
    strength: float
    model_version: str
    #: The proposed mask (PNG 0/255) when the request had none.
    mask_png: bytes | None = None
    #: For a DICOM task: the synthetic image as a Secondary Capture instance of a new series in the
    #: source's study (models/data/dicom.py), and its mask as a DICOM SEG referencing it.
    dicom: bytes | None = None
    seg: bytes | None = None


@dataclass
class ProposalTask:
    image: np.ndarray
    seed: int
    roi: np.ndarray | None


def _seed_and_sizes(seed: int | None, limits: CommonSettings) -> tuple[int, dict]:
    """A request's seed (drawn when unset, else checked) and the decode limits for its images: what a
    synthesis and a proposal request share."""
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    check_seed(seed)
    return seed, {"max_pixels": limits.max_pixels, "min_side": limits.min_image_side}


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
    settings = DEFAULTS.with_overrides(steps=steps, strength=strength)
    seed, sizes = _seed_and_sizes(seed, limits)
    img = decode_image(image, **sizes, role=f"{prefix}image")
    hashes = (sha256_bytes(image), sha256_bytes(mask) if mask else "")
    if not mask:  # no mask: a proposal (SynthesisHandler.run)
        return SynthesisTask(img, None, seed, settings.steps, float(settings.strength), *hashes)
    msk = decode_mask(mask, **sizes, role=f"{prefix}mask")
    check_pair(img, msk, role=role)
    return SynthesisTask(img, msk, seed, settings.steps, float(settings.strength), *hashes)


def parse_dicom_task(
    image: bytes,
    mask: bytes,
    seed: int | None,
    steps: int | None,
    strength: float | None,
    limits: CommonSettings,
    role: str = "",
) -> SynthesisTask:
    """:func:`parse_task` for a result wanted as DICOM: the source must be a DICOM file, since the
    synthetic image joins its study as a new series; anything else is an InvalidImageError."""
    from models.data.dicom import is_dicom, read_dataset

    prefix = f"{role}." if role else ""
    if image and not is_dicom(image):
        raise InvalidImageError(
            f"{prefix}image: a DICOM result needs a DICOM source image (a Part 10 file: the synthetic "
            "image becomes a new series in its study); this image is not DICOM: ask for a PNG result"
        )
    task = parse_task(image, mask, seed, steps, strength, limits, role)
    source = read_dataset(image, f"{prefix}image")
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if not source.get(k)]
    if missing:  # checked before sampling: the synthetic image's SourceImageSequence names the source
        raise InvalidImageError(
            f"{prefix}image: the DICOM source has no {' or '.join(missing)}, so a synthetic series cannot "
            "reference it"
        )
    if "PixelData" in source:  # the header is all the output needs
        del source.PixelData
    task.dicom_source = source
    return task


def dicom_result(task: SynthesisTask, image: np.ndarray, model_version: str) -> tuple[bytes, bytes]:
    """A DICOM task's synthetic image and its mask as DICOM Part 10 bytes (models/data/dicom.py): a new
    Secondary Capture series in the source's study saying SYNTHETIC with the model version and seed (the
    source's sha256 in DerivationDescription: its provenance), and a SEG of the mask referencing it."""
    from models.data.dicom import dataset_bytes, write_mask_seg, write_synthetic_dicom

    assert task.mask is not None
    made = write_synthetic_dicom(
        task.dicom_source, image, model_version, task.seed, source_sha256=task.image_sha256
    )
    seg = write_mask_seg(made, task.mask, model_version, task.seed)
    return dataset_bytes(made), dataset_bytes(seg)


def parse_proposal(
    image: bytes, seed: int | None, roi_mask: bytes | None, limits: CommonSettings
) -> ProposalTask:
    """Decode and check a propose_mask request."""
    if not image:
        raise ParameterError("image is missing (empty)")
    seed, sizes = _seed_and_sizes(seed, limits)
    img = decode_image(image, **sizes, role="image")
    roi = None
    if roi_mask:
        roi = decode_mask(roi_mask, **sizes, role="roi_mask")
        check_pair(img, roi, role="roi_mask")
    return ProposalTask(img, seed, roi)


#: The process's handler (set when it starts): the REST item validators propose masks through it.
ACTIVE: SynthesisHandler | None = None


def fill_proposal(task: SynthesisTask) -> SynthesisTask:
    """``task`` with a proposed mask when it has none, by the process's handler."""
    if task.mask is not None:
        return task
    if ACTIVE is None:
        raise ModelFolderError("no synthesizer is loaded in this process to propose a mask")
    return ACTIVE.fill(task)


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
        self._banks: dict[str, ShapeBank | None] = {}  # model version -> its folder's bank
        self._fallback_bank: ShapeBank | None = None

        def load(path):
            inpainter = LesionInpainter.from_pretrained(
                path, device=device, verify=True, batch_size=settings.unet_batch_size
            )
            meta = find_bank(path)
            self._banks[inpainter.model_version] = load_bank(meta) if meta is not None else None
            return inpainter

        self.slot = ModelSlot(
            "synthesizer",
            settings.model,
            settings.model_store,
            load=load,
            version_of=lambda inpainter: inpainter.model_version,
            on_swap=lambda inpainter: set_model("synthesis", inpainter.model_version),
        )
        self.slot.watch(settings.reload_interval_s)
        global ACTIVE
        ACTIVE = self  # the REST batch validators fill proposals with it (one handler per process)
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

    def bank(self) -> ShapeBank:
        """The loaded synthesizer's shape bank, else LESIONSYNTH_SHAPE_BANK's; a clear error without."""
        own = self._banks.get(self.inpainter.model_version)
        if own is not None:
            return own
        if self.settings.shape_bank:
            if self._fallback_bank is None:
                self._fallback_bank = load_bank(self.settings.shape_bank)
            return self._fallback_bank
        raise ModelFolderError(
            "this synthesis service has no shape bank for mask proposals: the synthesizer folder has none "
            "(trained before banks existed); build one with `lesionsynth masks bank --manifest M "
            "--lesion-label L --out FOLDER` and set LESIONSYNTH_SHAPE_BANK=FOLDER, or send a mask"
        )

    def propose(self, task: ProposalTask) -> np.ndarray:
        """A proposed mask (H, W) bool for the task's image (models/masks/propose.py)."""
        return propose_mask(task.image, self.bank(), task.seed, task.roi)

    def fill(self, task: SynthesisTask) -> SynthesisTask:
        """A task without a mask gets a proposal seeded by its seed (per request, before batching, so a
        proposal that fails is that request's error only)."""
        if task.mask is None:
            task.mask = self.propose(ProposalTask(task.image, task.seed, None))
            task.proposed_png = encode_png(task.mask.astype(np.uint8) * 255)
            task.mask_sha256 = sha256_bytes(task.proposed_png)
        return task

    def run(
        self, tasks: list[SynthesisTask], transport: str, actor: str | None = None
    ) -> list[SynthesisResult]:
        """Synthesize every task (in input order); same-settings tasks share UNet batches. Each PNG carries
        its provenance and is recorded in the audit log under ``actor`` (default: :attr:`actor`). A DICOM
        task (parse_dicom_task) also gets its DICOM and SEG, and the DICOM's sha256 is the one recorded:
        the file the client keeps is the one ``lesionsynth provenance`` finds."""
        for task in tasks:  # the adapters fill proposals per request; this is the safety net
            self.fill(task)
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
                results[i] = SynthesisResult(png, task.seed, steps, strength, version, task.proposed_png)
                output = png
                if task.dicom_source is not None:
                    results[i].dicom, results[i].seg = dicom_result(task, image, version)
                    output = results[i].dicom
                entries.append(
                    AuditEntry.new(
                        actor=actor or self.actor,
                        source=transport,
                        model_version=version,
                        seed=task.seed,
                        image_sha256=task.image_sha256,
                        mask_sha256=task.mask_sha256,
                        output_sha256=sha256_bytes(output),
                    )
                )
            metrics.IMAGES.labels(transport=transport).inc(len(idx))
        if self.audit is not None:
            self.audit.record(entries)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.slot.close()
