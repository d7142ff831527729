"""LesionInpainter: paint a synthetic lesion into the masked region of an image (paper 000, Methods).

For each image/mask pair:

1. take the lesion region (mask bounding box + margin, square) exactly as in training, resized to the
   UNet's resolution: x0 (3, R, R) in [-1, 1] and the region mask m (1, R, R);
2. noise it to ``strength`` (paper 000: "we extracted the masked part, added noise and transformed them";
   SDEdit, Meng et al. 2022): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at t = strength * T
   (strength 1.0 starts from pure noise);
3. denoise with a few-step solver (:mod:`models.diffusion.solvers`: by default DPM-Solver++(2M), SDE
   variant, 6 steps, Lu et al. 2022; or DDIM, Song et al. 2021, Eq. 12); after every step re-impose the
   known part, x_{t-1} <- m * x_{t-1} + (1 - m) * q(x0, t-1)  (the "known region" update of RePaint,
   Lugmayr et al. 2022, Eq. 8; its resampling is an option);
4. resize back and paste with a feathered seam (:mod:`models.diffusion.blend`): pixels outside the
   dilated mask are bit-identical to the input.

Many pairs share one UNet batch. Every random draw of a pair comes from its own
``torch.Generator(seed)``, so its result does not depend on which other pairs share the batch beyond
float rounding (~1e-6 in the UNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.data.images import check_pair
from models.data.regions import SquareBox, crop_square, region_box, resize_image, resize_mask
from models.diffusion.blend import FEATHER_FRACTION, editable_region, feather_width, paste_region
from models.diffusion.config import build_sample_scheduler
from models.diffusion.folder import LoadedSynthesizer, load_synthesizer
from models.diffusion.sampler_settings import (  # noqa: F401  (re-exported: the sampler's contract)
    DEFAULTS,
    MAX_RESAMPLE,
    MAX_SEED,
    MAX_STEPS,
    SOLVERS,
    SamplerSettings,
    check_seed,
)
from models.diffusion.solvers import denoise
from models.errors import ParameterError


class LesionInpainter:
    """The inference pipeline. Build with :meth:`from_pretrained`; call :meth:`inpaint` or
    :meth:`inpaint_batch`. Thread-compatible but not thread-safe: one caller at a time per instance."""

    def __init__(self, model: LoadedSynthesizer, device: str | torch.device = "cpu", batch_size: int = 16):
        self.model = model
        self.unet = model.unet.to(device).eval()
        self.device = torch.device(device)
        self.config = model.config
        self.scheduler_config = model.scheduler_config
        self.batch_size = batch_size
        self.defaults = DEFAULTS
        self.unet_calls = 0  # counted for benchmarks and metrics

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str | torch.device | None = None,
        verify: bool = True,
        batch_size: int = 16,
    ) -> LesionInpainter:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            load_synthesizer(folder, device=device, verify=verify), device=device, batch_size=batch_size
        )

    @property
    def model_version(self) -> str:
        return self.model.model_version

    @property
    def resolution(self) -> int:
        return self.config.resolution

    # -- geometry ---------------------------------------------------------------------------------------
    def region(self, mask: np.ndarray) -> tuple[SquareBox, int]:
        box = region_box(mask, self.config.margin)
        return box, feather_width(box)

    def editable_region(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool: the pixels an inpainting of this mask may change; all others stay bit-identical."""
        box, feather = self.region(mask)
        return editable_region(mask, box, feather)

    # -- the sampler ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_crops(
        self,
        x0: torch.Tensor,
        m: torch.Tensor,
        seeds: Sequence[int],
        settings: SamplerSettings = DEFAULTS,
    ) -> torch.Tensor:
        """Inpaint crops at model resolution.

        Args:
            x0: (B, 3, R, R) known crops in [-1, 1].
            m:  (B, 1, R, R) region to generate, in {0, 1}.
            seeds: one per crop; every random draw of crop i comes from ``torch.Generator(seeds[i])``.
            settings: see :class:`SamplerSettings`; ``settings.solver`` picks the step rule
                (:mod:`models.diffusion.solvers`). With ``resample > 1`` the sample is re-noised back
                one step between takes (RePaint's resampling, Lugmayr et al. 2022, Algorithm 1 lines
                4-11, jump length 1), so the generated region adapts to the re-imposed known region.
        Returns:
            (B, 3, R, R) in [-1, 1]; equal to x0 where m == 0.
        """
        scheduler = build_sample_scheduler(self.scheduler_config, settings.solver)
        steps = settings.steps
        predict_noise = self._noise_predictor(x0.shape[0], settings.guidance)
        scheduler.set_timesteps(steps)
        n_run = min(max(int(round(steps * settings.strength)), 1), steps)
        timesteps = scheduler.timesteps[steps - n_run :]
        gens = [torch.Generator().manual_seed(s) for s in seeds]

        def randn() -> torch.Tensor:
            return torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(self.device)

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            model_in = torch.cat([x, m], dim=1) if self.config.mask_conditioning else x
            self.unet_calls += 1
            return predict_noise(model_in, t.to(self.device))

        noise = randn()
        x0, m = x0.to(self.device), m.to(self.device)
        # Let the generator work across the whole feather zone past the mask edge: the seam then blends
        # generated tissue with original tissue instead of a resampled (blurred) copy of the original.
        grow = max(1, int(np.ceil(FEATHER_FRACTION * x0.shape[-1])))
        m_gen = F.max_pool2d(m, kernel_size=2 * grow + 1, stride=1, padding=grow)
        x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
        x = denoise(
            scheduler,
            settings.solver,
            timesteps,
            x,
            x0,
            noise,
            m_gen,
            predict,
            randn,
            settings.eta,
            settings.resample,
        )
        return x.clamp(-1, 1).cpu()

    def _noise_predictor(self, batch: int, guidance: float):
        """eps(x_t, t) for the lesion class: the unconditional UNet, or a class-conditional one with
        classifier-free guidance (the conditional and null branches in one UNet call)."""
        if not self.config.conditional:
            if guidance != 1.0:
                raise ParameterError(
                    f"guidance {guidance:g} needs a class-conditional synthesizer; this one "
                    f"({self.model_version}) is unconditional (use guidance 1)"
                )
            return lambda model_in, t: self.unet(model_in, t).sample
        lesion = torch.ones(batch, dtype=torch.long, device=self.device)
        if guidance == 1.0:
            return lambda model_in, t: self.unet(model_in, t, class_labels=lesion).sample
        both = torch.cat([lesion, torch.full_like(lesion, self.config.null_class)])

        def guided(model_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            eps_lesion, eps_null = self.unet(
                torch.cat([model_in, model_in]), t, class_labels=both
            ).sample.chunk(2)
            return eps_null + guidance * (eps_lesion - eps_null)

        return guided

    # -- public API -------------------------------------------------------------------------------------
    def inpaint(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        *,
        seed: int = 0,
        steps: int | None = None,
        strength: float | None = None,
        eta: float | None = None,
        resample: int | None = None,
        guidance: float | None = None,
        solver: str | None = None,
    ) -> np.ndarray:
        """One image (H, W, 3) uint8 + mask (H, W) bool -> new image (H, W, 3) uint8."""
        return self.inpaint_batch(
            [image],
            [mask],
            [seed],
            steps=steps,
            strength=strength,
            eta=eta,
            resample=resample,
            guidance=guidance,
            solver=solver,
        )[0]

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
        """Inpaint many pairs, ``self.batch_size`` per UNet batch. Images may differ in size.

        Unset sampler arguments take :data:`DEFAULTS`. Every pair and parameter is checked before any
        work starts, so a bad pair fails the call without wasting a UNet pass.
        """
        settings = self.defaults.with_overrides(
            steps=steps, strength=strength, eta=eta, resample=resample, guidance=guidance, solver=solver
        )
        if not (len(images) == len(masks) == len(seeds)):
            raise ParameterError("images, masks and seeds must have the same length")
        for i, (image, mask, seed) in enumerate(zip(images, masks, seeds, strict=True)):
            check_pair(image, mask, role=f"pair {i}" if len(images) > 1 else "")
            check_seed(seed)
        results: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            results.extend(self._inpaint_chunk(images[chunk], masks[chunk], seeds[chunk], settings))
        return results

    def _inpaint_chunk(self, images, masks, seeds, settings: SamplerSettings) -> list[np.ndarray]:
        r = self.resolution
        geometry = [self.region(mask) for mask in masks]
        x0 = torch.stack(
            [resize_image(crop_square(img, box), r) for img, (box, _) in zip(images, geometry, strict=True)]
        )
        m = torch.stack(
            [resize_mask(crop_square(msk, box), r) for msk, (box, _) in zip(masks, geometry, strict=True)]
        )
        # A mask too thin to survive downsizing still gets its region generated.
        m = torch.where(m.flatten(1).any(1)[:, None, None, None], m, torch.ones_like(m))
        crops = self.sample_crops(x0, m, list(seeds), settings)
        out = []
        for image, mask, crop, (box, feather) in zip(images, masks, crops, geometry, strict=True):
            up = F.interpolate(crop[None], size=(box.side, box.side), mode="bicubic", antialias=True)[0]
            generated = ((up.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
            out.append(paste_region(image, mask, box, generated, feather))
        return out
