"""Benchmark: our few-step inpainting sampler vs diffusers' RePaint at its defaults, same UNet, same crops.

    python -m loadtests.benchmarks.synthesis_vs_repaint [--model DIR] [--manifest CSV] [--n 16]

Both samplers inpaint the region crops of the same held-out normal images (``val`` + ``test`` rows of the
normal class) with the same trained UNet. We count UNet forward calls per image, time both in this one
run (the machine is noisy: compare the ratio, not absolute seconds), and judge quality by KID against
held-out real lesion crops on the features of a ResNet-18 trained here to tell lesion from normal crops
(:mod:`models.evaluation.crop_classifier`). For scale, the report also gives the KID of the untouched
normal crops (what "no lesion painted" scores) and of the training lesion crops (what "real lesions"
score) against the same reference.

Writes ``docs/benchmarks/synthesis.json`` and ``docs/benchmarks/synthesis.md``.
Without ``--model``, it uses (or trains, ~20 min on 2 cores) ``runs/ph2/synth-uncond`` on PH2, or a tiny
demo synthesizer when PH2 is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import RePaintPipeline, RePaintScheduler

from loadtests.benchmarks.common import REPO, bootstrap_synthesizer, held_out_sets, write_report
from models.diffusion.inpaint import DEFAULTS, LesionInpainter, SamplerSettings
from models.evaluation.crop_classifier import crop_features, lesion_probability, train_crop_classifier
from models.evaluation.kid import kid

#: Our sampler in the configurations worth comparing; "ours" is the shipped default.
VARIANTS = {
    "ours": DEFAULTS,
    "ours_resample2": replace(DEFAULTS, resample=2),
    # DDIM's partial noising (paper 000's SDEdit reading), pinned: it must not follow the default solver.
    "ours_ddim_partial": SamplerSettings(solver="ddim", steps=25, strength=0.8, eta=0.0),
}
REPAINT_SETTINGS = {"steps": 250, "jump_length": 10, "jump_n_sample": 10, "eta": 0.0}


class CallCounter:
    """Counts UNet forward calls through a forward pre-hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def run_ours(inpainter: LesionInpainter, x0, m, settings: SamplerSettings, batch: int):
    seeds = list(range(len(x0)))
    counter = CallCounter(inpainter.unet)
    inpainter.sample_crops(x0[:2], m[:2], seeds[:2], settings)  # warm-up, not timed
    counter.calls = 0
    tic = time.perf_counter()
    out = torch.cat(
        [
            inpainter.sample_crops(x0[i : i + batch], m[i : i + batch], seeds[i : i + batch], settings)
            for i in range(0, len(x0), batch)
        ]
    )
    seconds = time.perf_counter() - tic
    counter.handle.remove()
    n_batches = -(-len(x0) // batch)
    return out, counter.calls / n_batches, seconds / len(x0)


def run_repaint(inpainter: LesionInpainter, x0, m, batch: int):
    if inpainter.config.mask_conditioning:
        raise SystemExit("RePaint needs an unconditional (3-channel) UNet; pass such a --model")
    scheduler = RePaintScheduler.from_config(inpainter.scheduler_config)
    pipe = RePaintPipeline(unet=inpainter.unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=False, leave=False, desc="RePaint")
    counter = CallCounter(inpainter.unet)
    outs = []
    tic = time.perf_counter()
    for i in range(0, len(x0), batch):
        known = 1.0 - m[i : i + batch]  # RePaint's mask: 1 = keep, 0 = inpaint
        gens = [torch.Generator().manual_seed(s) for s in range(i, i + len(known))]
        with torch.inference_mode():
            images = pipe(image=x0[i : i + batch], mask_image=known, generator=gens, output_type="np").images
        outs.append(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1)
    seconds = time.perf_counter() - tic
    counter.handle.remove()
    n_batches = -(-len(x0) // batch)
    return torch.cat(outs), counter.calls / n_batches, seconds / len(x0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--n", type=int, default=16, help="held-out normal crops to inpaint")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--feature-epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    manifest, model, data_name = bootstrap_synthesizer(args.manifest, args.model)
    inpainter = LesionInpainter.from_pretrained(model, device="cpu")
    sets = held_out_sets(
        manifest, inpainter.model.card["lesion_label"], inpainter.resolution, inpainter.config.margin
    )
    x0, m = sets.normal_images[: args.n], sets.normal_masks[: args.n]
    print(
        f"{data_name}: {len(x0)} held-out normal crops at {inpainter.resolution}px, torch threads "
        f"{torch.get_num_threads()}"
    )

    timed = {}
    for name, settings in VARIANTS.items():
        crops, calls, spi = run_ours(inpainter, x0, m, settings, args.batch)
        timed[name] = {"crops": crops, "unet_calls": calls, "seconds_per_image": spi, "settings": settings}
        print(f"{name}: {calls:.0f} UNet calls/image, {spi:.3f} s/image")
    repaint, rp_calls, rp_spi = run_repaint(inpainter, x0, m, args.batch)
    timed["repaint"] = {"crops": repaint, "unet_calls": rp_calls, "seconds_per_image": rp_spi}
    print(f"RePaint: {rp_calls:.0f} UNet calls/image, {rp_spi:.3f} s/image")

    net = train_crop_classifier(
        sets.train_crops, sets.train_labels, epochs=args.feature_epochs, progress=True
    )
    ref = crop_features(net, sets.lesion_images)
    crop_sets = {
        **{k: v["crops"] for k, v in timed.items()},
        "untouched_normal": x0,
        "train_lesions": sets.train_lesion_images,
    }
    scores = {name: kid(crop_features(net, c), ref, n_subsets=200, seed=0) for name, c in crop_sets.items()}
    p_lesion = {name: float(lesion_probability(net, c).mean()) for name, c in crop_sets.items()}
    ours = timed["ours"]
    result = {
        "data": data_name,
        "model_version": inpainter.model_version,
        "resolution": inpainter.resolution,
        "n_crops": len(x0),
        "batch_size": args.batch,
        "ours_settings": DEFAULTS.as_kwargs(),
        "ours_unet_calls": ours["unet_calls"],
        "ours_seconds_per_image": round(ours["seconds_per_image"], 4),
        "repaint_unet_calls": rp_calls,
        "repaint_seconds_per_image": round(rp_spi, 4),
        "unet_call_ratio": round(rp_calls / ours["unet_calls"], 1),
        "time_ratio": round(rp_spi / ours["seconds_per_image"], 1),
        "ours_kid": scores["ours"].mean,
        "repaint_kid": scores["repaint"].mean,
        "variants": {
            name: {
                "settings": v["settings"].as_kwargs() if "settings" in v else REPAINT_SETTINGS,
                "unet_calls": v["unet_calls"],
                "seconds_per_image": round(v["seconds_per_image"], 4),
                "unet_call_ratio_vs_repaint": round(rp_calls / v["unet_calls"], 1),
                "time_ratio_vs_repaint": round(rp_spi / v["seconds_per_image"], 1),
            }
            for name, v in timed.items()
        },
        "kid_features": "resnet18 trained here on train-split lesion vs normal crops "
        f"({args.feature_epochs} epochs), penultimate 512-d",
        "kid_reference": f"{len(sets.lesion_images)} held-out (val+test) real lesion crops",
        "kid_vs_heldout_lesions": {
            k: {"mean": v.mean, "std": v.std, "subset_size": v.subset_size} for k, v in scores.items()
        },
        "mean_p_lesion": p_lesion,
        "heldout_lesions_mean_p_lesion": float(lesion_probability(net, sets.lesion_images).mean()),
        "machine": {
            "cpus": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": "make bench  (python -m loadtests.benchmarks.synthesis_vs_repaint)",
    }
    write_report(args.out, "synthesis", result, markdown(result))
    print(json.dumps({k: v for k, v in result.items() if "ratio" in k or "seconds" in k}, indent=1))
    return result


def markdown(r: dict) -> str:
    timing = "\n".join(
        f"| {name} | {v['settings']} | {v['unet_calls']:.0f} | {v['seconds_per_image']:.3f} | "
        f"{v['unet_call_ratio_vs_repaint']} | {v['time_ratio_vs_repaint']} |"
        for name, v in r["variants"].items()
    )
    kid_rows = "\n".join(
        f"| {name} | {v['mean']:.2f} | {v['std']:.2f} | {r['mean_p_lesion'][name]:.3f} |"
        for name, v in r["kid_vs_heldout_lesions"].items()
    )
    return f"""# Synthesis benchmark: our sampler vs RePaint (same UNet, same crops)

Command: `{r["command"]}`. Data: {r["data"]}; {r["n_crops"]} held-out normal region crops at
{r["resolution"]} px, batch {r["batch_size"]}, model `{r["model_version"]}`, CPU ({r["machine"]["cpus"]} threads).
Times are from one run on a noisy 2-core machine: read the ratios.

| sampler | settings | UNet calls / image | seconds / image | RePaint / it, calls | RePaint / it, time |
|---|---|---:|---:|---:|---:|
{timing}

`ours` is the default (`SamplerSettings()`): **{r["unet_call_ratio"]}x** fewer UNet calls and **{r["time_ratio"]}x**
less time than RePaint at its defaults.

Quality: KID (lower = closer to real lesions) against {r["kid_reference"]}; features: {r["kid_features"]}.
The std is over 200 random subsets of the same small sets; it understates the real uncertainty.

| crops | KID mean | KID std | mean P(lesion) |
|---|---:|---:|---:|
{kid_rows}

P(lesion) is the feature classifier's own probability that a crop is a lesion (held-out real lesions:
{r["heldout_lesions_mean_p_lesion"]:.3f}). `untouched_normal` is the normal crops before painting (what no
lesion scores); `train_lesions` is real lesions the synthesizer trained on (what real lesion tissue scores).
"""


if __name__ == "__main__":
    main()
