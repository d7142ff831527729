"""The fast-sampler benchmark's crop check (loadtests/benchmarks/fast_sampler.py): its machinery, not its
figures (those come from ``python -m loadtests.benchmarks.fast_sampler`` on ISIC 2017, docs/benchmarks/)."""

import numpy as np
import pytest
import torch

from loadtests.benchmarks import fast_sampler as fs
from loadtests.benchmarks import fast_sampler_report as report


def test_region_laplacian_reads_the_region_interior_only():
    rng = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    assert fs.region_laplacian(flat, mask)[0] == 0
    noisy_outside = flat.clone()
    noisy_outside[..., :3, :] = torch.randn(1, 3, 3, 16, generator=rng)
    assert fs.region_laplacian(noisy_outside, mask)[0] == 0  # the stencil never leaves the eroded mask
    speckle = flat.clone()
    speckle[..., 4:12, 4:12] = 0.1 * torch.randn(1, 3, 8, 8, generator=rng)
    smooth = flat.clone()
    smooth[..., 4:12, 4:12] = torch.linspace(-0.5, 0.5, 8)  # a linear ramp: Laplacian 0 inside
    figures = fs.region_laplacian(torch.cat([speckle, smooth]), mask.repeat(2, 1, 1, 1))
    assert figures[0] > 0.1 and figures[1] == pytest.approx(0, abs=1e-6)
    # An empty mask falls back to the whole crop instead of dividing by zero.
    assert fs.region_laplacian(speckle, torch.zeros_like(mask))[0] > 0


def test_region_crops_take_the_synthesizers_region():
    image = np.zeros((100, 120, 3), np.uint8)
    image[40:60, 50:70] = 255
    mask = np.zeros((100, 120), bool)
    mask[40:60, 50:70] = True
    crops, masks = fs.region_crops([image], [mask], 32, 0.15)
    assert crops.shape == (1, 3, 32, 32) and masks.shape == (1, 1, 32, 32)
    assert crops[0, :, 16, 16].tolist() == [1.0, 1.0, 1.0]  # the lesion is centred
    assert crops[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]  # with a margin of surrounding tissue
    assert fs.auc(np.array([0.9, 0.8]), np.array([0.1, 0.8])) == pytest.approx(0.875)


def _kid(mean: float, std: float = 1.0) -> dict:
    return {"mean": mean, "std": std}


def _result(crop_rows: dict[str, tuple[float, float, float]]) -> dict:
    """A whole-image result that chose dpmpp-2m-sde-6, with crop rows name -> (KID_mel, KID_non, P)."""
    calls = {"ddim-25 (reference)": 25, "ddim-10 (control)": 10, "dpmpp-2m-sde-6": 6}
    calls |= {"dpmpp-2m-sde-10": 10, "ddim-10-trailing (control)": 10}
    rows = {
        name: {
            "settings": {},
            "unet_calls_per_image": calls[name],
            "seconds_per_image": 1.0,
            "n": 4,
            "kid_melanoma": _kid(mel),
            "kid_non_melanoma": _kid(non),
            "mean_p_lesion": p,
            "region_laplacian": 0.05,
            "region_laplacian_vs_real_melanoma": 1.0,
        }
        for name, (mel, non, p) in crop_rows.items()
    }
    for anchor in ("untouched sources", "real val melanoma", "real val non-melanoma"):
        rows[anchor] = {k: v for k, v in rows["ddim-25 (reference)"].items() if k != "settings"}
    result = {
        "reference": fs.REFERENCE,
        "decision": {"chosen": "dpmpp-2m-sde-6"},
        "crop_check": {
            "rows": rows,
            "decision": fs.decide({n: r for n, r in rows.items() if "settings" in r}),
            "crop": "c",
            "classifier": {"arch": "a", "train": "t", "epochs": 1, "seed": 0, "val_auc": 0.5, "cache": "x"},
            "noise": "n",
            "controls": {},
        },
    }
    result["crop_check"]["recommendation"] = fs.recommend(result)
    return result


def test_recommendation_follows_the_rule_on_crop_figures():
    base = {"ddim-25 (reference)": (10.0, 5.0, 0.5), "ddim-10 (control)": (9.5, 5.0, 0.5)}
    keep = _result({**base, "dpmpp-2m-sde-6": (10.9, 4.1, 0.46), "dpmpp-2m-sde-10": (10.0, 5.0, 0.5)})
    assert keep["crop_check"]["recommendation"]["action"] == "keep"
    keep["crop_check"]["rows"]["dpmpp-2m-sde-10"]["region_laplacian"] = 0.2  # 4x the reference's
    text = report.crop_markdown(keep)
    assert "keep `dpmpp-2m-sde-6`" in text and "`dpmpp-2m-sde-10` scores the most melanoma-like" in text
    switch = _result({**base, "dpmpp-2m-sde-6": (11.5, 5.0, 0.5), "dpmpp-2m-sde-10": (10.0, 5.0, 0.5)})
    rec = switch["crop_check"]["recommendation"]
    assert rec["action"] == "switch" and rec["recommended"] == "ddim-10 (control)"  # tie on calls: lower KID
    assert "replace `dpmpp-2m-sde-6`" in report.crop_markdown(switch)
    # Only the (unshippable) trailing control passes: revert.
    revert = _result(
        {
            "ddim-25 (reference)": (10.0, 5.0, 0.5),
            "ddim-10 (control)": (12.0, 5.0, 0.5),
            "dpmpp-2m-sde-6": (10.0, 3.0, 0.5),
            "dpmpp-2m-sde-10": (10.0, 5.0, 0.4),
            "ddim-10-trailing (control)": (10.0, 5.0, 0.5),
        }
    )
    rec = revert["crop_check"]["recommendation"]
    assert rec["action"] == "revert" and rec["recommended"] == fs.REFERENCE
    assert rec["passing"] == ["ddim-10-trailing (control)"]
    assert "post-hoc robustness check" in report.crop_markdown(revert)
