"""The multistep solver (DPM-Solver++(2M)) under the inpainting contract: identity outside the editable
region, determinism per seed, batch independence, UNet calls counted, settings checked, guidance runs."""

import numpy as np
import pytest
import torch

from models.diffusion.config import SynthesizerConfig, build_train_scheduler, build_unet
from models.diffusion.folder import LoadedSynthesizer
from models.diffusion.inpaint import SOLVERS, LesionInpainter, SamplerSettings
from models.errors import ParameterError

FAST = [s for s in SOLVERS if s != "ddim"]


class UNetCounter:
    """Counts actual UNet forward calls (a forward pre-hook), independent of the inpainter's own count."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def crops(n: int, r: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, r, r, generator=g) * 2 - 1
    m = torch.zeros(n, 1, r, r)
    for i in range(n):
        a = 6 + i % 5
        m[i, :, a : a + 12, a + 1 : a + 14] = 1
    return x0, m


@pytest.mark.parametrize("solver", FAST)
def test_outside_the_editable_region_is_bit_identical(inpainter, normal_pair, solver):
    image, mask = normal_pair
    out = inpainter.inpaint(image, mask, seed=3, solver=solver, steps=8)
    region = inpainter.editable_region(mask)
    np.testing.assert_array_equal(out[~region], image[~region])
    diff = np.abs(out.astype(int) - image.astype(int)).sum(-1)
    assert (diff[mask] > 0).mean() > 0.9  # and it painted something inside


@pytest.mark.parametrize("solver", FAST)
def test_crops_keep_the_known_region_exactly(inpainter, solver):
    x0, m = crops(3)
    out = inpainter.sample_crops(x0, m, [0, 1, 2], SamplerSettings(solver=solver, steps=6))
    # Known pixels far from the mask (beyond the grown generation mask) come back as x0, clamped.
    far = torch.nn.functional.max_pool2d(m, kernel_size=9, stride=1, padding=4) == 0
    assert torch.equal(out[far.expand_as(out)], x0.clamp(-1, 1)[far.expand_as(out)])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("solver", FAST)
def test_same_seed_same_output_and_batch_independence(inpainter, solver):
    x0, m = crops(5)
    settings = SamplerSettings(solver=solver, steps=8)
    a = inpainter.sample_crops(x0, m, [10, 11, 12, 13, 14], settings)
    b = inpainter.sample_crops(x0, m, [10, 11, 12, 13, 14], settings)
    assert torch.equal(a, b)
    # Crops 1 and 3 with other company (and in another order): the same result up to UNet float rounding
    # (~1e-7, magnified at the first step by the x0 prediction's 1 / sqrt(abar) = 160: measured 2e-5 alone,
    # 7.7e-5 for dpmpp-2m in one `make test` run beside another worker). The bound, 5e-4, is 1/16 of a grey
    # level (8e-3); mixing crops up would differ by ~0.1-1.
    c = inpainter.sample_crops(x0[[3, 1]], m[[3, 1]], [13, 11], settings)
    assert (c - a[[3, 1]]).abs().max() < 5e-4
    # Another seed paints something else.
    d = inpainter.sample_crops(x0[:1], m[:1], [99], settings)
    assert (d - a[:1]).abs()[m[:1].expand_as(d) > 0].mean() > 0.05


@pytest.mark.parametrize("solver", FAST)
def test_resample_restores_the_solver_history_and_stays_deterministic(inpainter, solver):
    x0, m = crops(2)
    settings = SamplerSettings(solver=solver, steps=4, resample=2)
    counter = UNetCounter(inpainter.unet)
    try:
        a = inpainter.sample_crops(x0, m, [1, 2], settings)
    finally:
        counter.handle.remove()
    assert counter.calls == settings.unet_calls == 7
    assert torch.equal(a, inpainter.sample_crops(x0, m, [1, 2], settings))
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("steps", [10, 8, 6])
@pytest.mark.parametrize("solver", FAST)
def test_unet_calls_are_counted_and_at_most_ten(inpainter, solver, steps):
    x0, m = crops(2)
    settings = SamplerSettings(solver=solver, steps=steps)
    counter = UNetCounter(inpainter.unet)
    before = inpainter.unet_calls
    try:
        inpainter.sample_crops(x0, m, [0, 1], settings)
    finally:
        counter.handle.remove()
    assert counter.calls == inpainter.unet_calls - before == settings.unet_calls == steps <= 10
    partial = SamplerSettings(solver=solver, steps=10, strength=0.6)
    assert partial.unet_calls == 6


def test_settings_reject_an_unknown_solver():
    with pytest.raises(ParameterError, match="solver"):
        SamplerSettings().with_overrides(solver="euler")
    with pytest.raises(ParameterError, match="solver"):
        SamplerSettings(solver="dpm++").check()
    for solver in SOLVERS:
        assert SamplerSettings().with_overrides(solver=solver).solver == solver


def test_inpaint_rejects_an_unknown_solver_before_any_unet_call(inpainter, normal_pair):
    image, mask = normal_pair
    before = inpainter.unet_calls
    with pytest.raises(ParameterError, match="solver"):
        inpainter.inpaint(image, mask, seed=0, solver="unipc2")
    assert inpainter.unet_calls == before


@pytest.fixture(scope="module")
def conditional_inpainter():
    """A class-conditional tiny UNet with random weights: enough to run the guided path."""
    torch.manual_seed(0)
    config = SynthesizerConfig(resolution=32, preset="tiny", num_classes=2)
    model = LoadedSynthesizer(
        unet=build_unet(config).eval(),
        scheduler_config=dict(build_train_scheduler(config).config),
        config=config,
        card={"model_version": "random-conditional"},
    )
    return LesionInpainter(model, device="cpu")


@pytest.mark.parametrize("solver", FAST)
def test_guidance_runs_with_one_unet_call_per_step(conditional_inpainter, solver):
    x0, m = crops(3)
    settings = SamplerSettings(solver=solver, steps=6, guidance=3.0)
    counter = UNetCounter(conditional_inpainter.unet)
    try:
        a = conditional_inpainter.sample_crops(x0, m, [0, 1, 2], settings)
    finally:
        counter.handle.remove()
    assert counter.calls == settings.unet_calls == 6  # a guided step: one call of twice the batch
    assert torch.isfinite(a).all()
    unguided = conditional_inpainter.sample_crops(x0, m, [0, 1, 2], settings.with_overrides(guidance=1.0))
    assert not torch.equal(a, unguided)
    b = conditional_inpainter.sample_crops(x0[1:], m[1:], [1, 2], settings)
    # Batch independence as above; guidance 3 scales the branches' rounding difference by 2 x 3 + 1.
    assert (b - a[1:]).abs().max() < 3e-4


def test_the_default_is_a_fast_solver_and_its_calls_are_counted(inpainter):
    from models.diffusion.inpaint import DEFAULTS

    assert DEFAULTS.solver != "ddim" and DEFAULTS.unet_calls <= 10
    x0, m = crops(2)
    counter = UNetCounter(inpainter.unet)
    try:
        inpainter.sample_crops(x0, m, [0, 1], DEFAULTS)
    finally:
        counter.handle.remove()
    assert counter.calls == DEFAULTS.unet_calls
