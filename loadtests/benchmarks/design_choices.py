"""Measurements behind the synthesizer's defaults: mask conditioning and the sampler settings.

    python -m loadtests.benchmarks.design_choices --uncond runs/ph2/synth-uncond --cond runs/ph2/synth-cond

The two synthesizers are identical (PH2 train melanomas, ``common.PH2_SYNTH``: same data, seed, steps,
batch) but for the mask given to the conditioned one as a 4th input channel. Everything is measured on
held-out data (val + test rows):

* held-out denoising loss: the DDPM objective (Ho et al. 2020, Eq. 14) on the held-out lesion crops, on a
  fixed grid of 20 timesteps x 4 noise draws (the same draws for both models);
* for each sampler setting, the held-out normal crops are inpainted and scored by KID against held-out
  real lesion crops (lower = more lesion-like) and against held-out normal crops (higher = further from
  normal), on the features of a lesion-vs-normal ResNet-18 trained here, plus its mean P(lesion).

Writes docs/benchmarks/design_choices.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from loadtests.benchmarks.common import REPO, held_out_sets, ph2_split_manifest, ph2_synthesizer, write_report
from models.diffusion.config import build_train_scheduler
from models.diffusion.inpaint import DEFAULTS, LesionInpainter, SamplerSettings
from models.evaluation.crop_classifier import crop_features, lesion_probability, train_crop_classifier
from models.evaluation.kid import kid

#: Sampler settings compared, each a change of one field from the defaults (plus the old default).
SWEEP = {
    **{f"strength {v}": DEFAULTS.with_overrides(strength=v) for v in (0.5, 0.7, 0.8, 0.9, 1.0)},
    **{f"eta {v}": DEFAULTS.with_overrides(eta=v) for v in (0.0, 0.5)},
    **{f"{v} steps": DEFAULTS.with_overrides(steps=v) for v in (10, 50)},
    "resample 2": DEFAULTS.with_overrides(resample=2),
    "strength 0.8, eta 0 (first default)": SamplerSettings(strength=0.8, eta=0.0),
}


@torch.inference_mode()
def heldout_loss(
    inpainter: LesionInpainter, x0: torch.Tensor, m: torch.Tensor, n_t: int = 20, draws: int = 4
):
    """Mean eps-MSE over a fixed (t, noise) grid: (N, 3, R, R) crops, (N, 1, R, R) masks -> float."""
    scheduler = build_train_scheduler(inpainter.config)
    g = torch.Generator().manual_seed(1234)
    losses = []
    for t in torch.linspace(0, scheduler.config.num_train_timesteps - 1, n_t).long():
        for _ in range(draws):
            noise = torch.randn(x0.shape, generator=g)
            xt = scheduler.add_noise(x0, noise, t.repeat(len(x0)))
            inp = torch.cat([xt, m], 1) if inpainter.config.mask_conditioning else xt
            losses.append(F.mse_loss(inpainter.unet(inp, t).sample, noise).item())
    return sum(losses) / len(losses)


def inpaint_all(inpainter: LesionInpainter, x0, m, settings: SamplerSettings, batch: int = 16):
    seeds = list(range(len(x0)))
    return torch.cat(
        [
            inpainter.sample_crops(x0[i : i + batch], m[i : i + batch], seeds[i : i + batch], settings)
            for i in range(0, len(x0), batch)
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uncond", type=Path, help="default: runs/ph2/synth-uncond (trained if missing)")
    parser.add_argument("--cond", type=Path, help="default: runs/ph2/synth-cond (trained if missing)")
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--feature-epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    manifest = args.manifest or ph2_split_manifest()
    uncond = args.uncond or ph2_synthesizer(mask_conditioning=False)
    cond = args.cond or ph2_synthesizer(mask_conditioning=True)
    models = {
        "unconditional": LesionInpainter.from_pretrained(uncond, device="cpu"),
        "mask-conditioned": LesionInpainter.from_pretrained(cond, device="cpu"),
    }
    first = next(iter(models.values()))
    sets = held_out_sets(manifest, first.model.card["lesion_label"], first.resolution, first.config.margin)
    net = train_crop_classifier(
        sets.train_crops, sets.train_labels, epochs=args.feature_epochs, progress=True
    )
    ref_lesion, ref_normal = crop_features(net, sets.lesion_images), crop_features(net, sets.normal_images)

    def score(crops: torch.Tensor) -> dict:
        feats = crop_features(net, crops)
        k_les, k_nor = kid(feats, ref_lesion, n_subsets=200), kid(feats, ref_normal, n_subsets=200)
        return {
            "kid_vs_heldout_lesions": round(k_les.mean, 5),
            "kid_vs_heldout_lesions_std": round(k_les.std, 5),
            "kid_vs_heldout_normals": round(k_nor.mean, 5),
            "kid_vs_heldout_normals_std": round(k_nor.std, 5),
            "mean_p_lesion": round(float(lesion_probability(net, crops).mean()), 4),
        }

    result = {
        "command": "python -m loadtests.benchmarks.design_choices",
        "n_heldout_lesions": len(sets.lesion_images),
        "n_heldout_normals": len(sets.normal_images),
        "reference": {
            "untouched_normals": score(sets.normal_images),
            "train_lesions": score(sets.train_lesion_images),
        },
        "defaults": DEFAULTS.as_kwargs(),
        "models": {},
    }
    x0, m = sets.normal_images, sets.normal_masks
    for name, inp in models.items():
        card = inp.model.card
        entry = {
            "model_version": card["model_version"],
            "steps": card["steps"],
            "final_train_loss": round(card["loss_curve"][-1][1], 5),
            "heldout_denoising_loss": round(heldout_loss(inp, sets.lesion_images, sets.lesion_masks), 5),
            "defaults": score(inpaint_all(inp, x0, m, DEFAULTS)),
            # The sweep runs on the unconditional model only: the conditioning question is settled at the
            # defaults above, and the sweep is the slow part.
            "sweep": {label: score(inpaint_all(inp, x0, m, st)) for label, st in SWEEP.items()}
            if not inp.config.mask_conditioning
            else {},
        }
        result["models"][name] = entry
        print(name, {k: v for k, v in entry.items() if k != "sweep"})
    write_report(args.out, "design_choices", result, markdown(result))
    return result


def _row(label: str, v: dict) -> str:
    return (
        f"| {label} | {v['kid_vs_heldout_lesions']:.4f} +- {v['kid_vs_heldout_lesions_std']:.4f} | "
        f"{v['kid_vs_heldout_normals']:.4f} +- {v['kid_vs_heldout_normals_std']:.4f} | {v['mean_p_lesion']:.3f} |"
    )


def markdown(r: dict) -> str:
    head = (
        "| setting | KID vs held-out lesions (lower = more lesion-like) | KID vs held-out normals "
        "(higher = less normal-like) | mean P(lesion) |\n|---|---:|---:|---:|"
    )
    models = "\n".join(
        f"| {name} | {v['final_train_loss']:.4f} | {v['heldout_denoising_loss']:.4f} |"
        for name, v in r["models"].items()
    )
    at_defaults = "\n".join(_row(name, v["defaults"]) for name, v in r["models"].items())
    sweeps = []
    for name, v in r["models"].items():
        if v["sweep"]:
            rows = "\n".join(_row(label, x) for label, x in v["sweep"].items())
            sweeps.append(
                f"### Sampler settings, {name} model (one change from the defaults per row)\n\n{head}\n{rows}"
            )
    refs = "\n".join(_row(k, v) for k, v in r["reference"].items())
    return f"""# Synthesizer design choices, measured on held-out PH2 data

Command: `{r["command"]}`. Both synthesizers: same data (PH2 train melanomas), seed, 3000 steps of 8;
the conditioned one also sees the mask as a 4th input channel. Held-out: {r["n_heldout_lesions"]} lesion
crops and {r["n_heldout_normals"]} normal crops (val + test). KID features: a ResNet-18 trained here on
train-split lesion-vs-normal crops. Small sets: read the +- (std over 200 subsets) before any difference.

| model | final train loss | held-out denoising loss |
|---|---:|---:|
{models}

Both models at the default sampler settings `{r["defaults"]}`:

{head}
{at_defaults}

Reference points (no synthesis):

{head}
{refs}

{chr(10).join(sweeps)}
"""


if __name__ == "__main__":
    main()
