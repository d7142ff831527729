"""Benchmark (issue 14): a sampler with <= 10 UNet calls per image vs the 25-step DDIM default, on ISIC 2017.

    python -m loadtests.benchmarks.fast_sampler [--n 64] [--batch 16] [--cache DIR]

Synthesizer: ``runs/experiments/isic2017-donor/synthesizer`` (64 px, unconditional, trained on donor
melanoma regions). Data: VALIDATION rows of ``runs/experiments/isic2017-donor/data/manifest.csv`` only
(the test split is not read). Sources: a seeded subset (``--n``, default 64) of the 150 val non-melanoma
images, each painted in its own lesion mask (``mask_path``) with seed = its position in the subset, the
same seed for every candidate. References: the 30 real val melanoma images and the 150 real val
non-melanoma images (whole images, as the classifier sees them).

Features and P(lesion) both come from the classifier ``runs/experiments/isic2017-donor/units/none/seed-0/
classifier`` (ResNet-18, 96 px, trained on real data only: the experiment's ``none`` unit), through
:func:`models.evaluation.fidelity.classifier_features` / :func:`~models.evaluation.fidelity.fidelity_scores`
(KID vs real melanoma and vs real non-melanoma, on reference-scaled features, subsets of half the smaller
set, 200 subsets, the same subset draws for every candidate) and :func:`models.classifier.predict.
predict_images` (P(melanoma), called P(lesion) here). No crop classifier is trained.

Candidates (``CANDIDATES``): the default (DDIM, 25 steps, eta 1: the reference); DDIM at 10 steps (the
control: is it the solver or only fewer steps?); DPM-Solver++(2M) at 10 steps and its SDE variant at 10, 8
and 6. All at strength 1, resample 1. (A probe on 8 val crops before the run: the deterministic 2M left
2-3x the high-frequency energy of DDIM-25 inside the region, mean |Laplacian| 0.17 vs 0.05, at 10 steps
whatever the first timestep or clipping; the SDE variant 0.06. So the ODE solver is measured at 10 steps
only and the SDE variant down to 6.) Time: every candidate's batches run interleaved in rounds
(round k = batch k of every candidate, in candidate order) in one process with the same batch size;
seconds/image is the sum of its batches' wall time (crop, sample, paste) over the images. UNet calls are
counted by a forward hook. Results are cached per (candidate, batch) under ``--cache``, so an interrupted
run resumes (times of a resumed run then come from more than one process; the JSON says how many).

Decision rule (declared before the run; the primary comparison). Let R be the reference (DDIM 25) with
KID vs real melanoma K_mel(R) +- s_mel(R) and vs real non-melanoma K_non(R) +- s_non(R) (mean +- std over
subsets) and mean P(lesion) P(R). A candidate C with <= 10 UNet calls per image passes when

    K_mel(C) <= K_mel(R) + s_mel(R)     (not less melanoma-like by more than the reference's subset std),
    K_non(C) >= K_non(R) - s_non(R)     (not more non-melanoma-like by more than that std),
    P(C)     >= P(R) - 0.05.

The fastest passing candidate (fewest UNet calls per image; a tie goes to the lower K_mel) becomes the
default sampler; if none passes, the default stays and the page says so.

Writes ``docs/benchmarks/fast_sampler.{json,md}`` (the markdown: fast_sampler_report.py) and ``docs/benchmarks/fast_sampler.png`` (a few val
regions painted by each candidate with the same seed).

Crop check (a second section, added after the run above: a POST-HOC robustness check, not the declared
primary comparison). The whole-image features above could not tell the samplers apart (every candidate
passed within a subset std as wide as the mean, and the unpainted sources scored closest to melanoma), so
the same painted images (read back from the cache: nothing is re-sampled) are also judged where the
synthesizer works: each image's lesion region as the synthesizer sees it (:func:`models.data.regions.
lesion_crop`: the mask's square box with the synthesizer's margin, resized to its resolution, 64 px), for
every candidate's paintings (the source's own mask), the 30 real val melanoma images and the 150 real val
non-melanoma images (their own masks). Features and P(lesion) come from a crop classifier (ResNet-18,
:func:`models.evaluation.crop_classifier.train_crop_classifier`, seed 0, ``--crop-epochs``) trained on the
TRAIN split's region crops only, melanoma vs non-melanoma (cached under ``--cache``); KID as above
(:func:`models.evaluation.fidelity.fidelity_scores`). A fine-grain noise figure: the mean |Laplacian|
(3x3, per channel, [-1, 1] units) over the region mask's interior (eroded by one pixel, so the stencil
never straddles the lesion's border) of the 64 px crop, also as a ratio to the real melanoma crops'. The
SAME rule is applied to these figures. One control is painted for this section only (``CONTROLS``): DDIM,
10 steps, ``trailing`` timestep spacing (the shipped DDIM uses the saved ``leading`` spacing; here the
benchmark hands DDIM a copy of the scheduler config with ``timestep_spacing="trailing"``, no sampler
change); it is timed in its own rounds, not interleaved with the candidates above.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from loadtests.benchmarks.common import REPO, write_report
from loadtests.benchmarks.synthesis_vs_repaint import CallCounter
from models.artifacts import atomic_write_bytes
from models.classifier.folder import load_classifier
from models.classifier.predict import predict_images
from models.data.manifest import load_manifest
from models.data.regions import crop_square, lesion_crop
from models.diffusion.crops import LesionCrops
from models.diffusion.inpaint import LesionInpainter, SamplerSettings
from models.evaluation.crop_classifier import crop_features, lesion_probability, train_crop_classifier
from models.evaluation.fidelity import classifier_features, fidelity_scores

EXPERIMENT = REPO / "runs" / "experiments" / "isic2017-donor"
MODEL = EXPERIMENT / "synthesizer"
MANIFEST = EXPERIMENT / "data" / "manifest.csv"
CLASSIFIER = EXPERIMENT / "units" / "none" / "seed-0" / "classifier"
LESION, NORMAL = "lesion", "non_melanoma"  # lesion = melanoma in this manifest
MAX_CALLS = 10
P_MARGIN = 0.05
CROP_SEED = 0

#: name -> settings; the first is the reference: the 25-step DDIM default this issue measures against.
CANDIDATES: dict[str, SamplerSettings] = {
    "ddim-25 (reference)": SamplerSettings(solver="ddim", steps=25),
    "ddim-10 (control)": SamplerSettings(solver="ddim", steps=10),
    "dpmpp-2m-10": SamplerSettings(solver="dpmpp-2m", steps=10),
    "dpmpp-2m-sde-10": SamplerSettings(solver="dpmpp-2m-sde", steps=10),
    "dpmpp-2m-sde-8": SamplerSettings(solver="dpmpp-2m-sde", steps=8),
    "dpmpp-2m-sde-6": SamplerSettings(solver="dpmpp-2m-sde", steps=6),
}
REFERENCE = next(iter(CANDIDATES))
#: Painted for the crop check only (not a candidate of the declared rule above): DDIM, 10 steps, with
#: ``trailing`` timestep spacing (its first step at t = 999, from pure noise; the shipped ``leading``
#: spacing starts 10 steps at t = 900). Measuring it needs no sampler change (a scheduler-config copy);
#: shipping it would (build_sample_scheduler gives DDIM the saved config as it is).
CONTROLS: dict[str, SamplerSettings] = {
    "ddim-10-trailing (control)": SamplerSettings(solver="ddim", steps=10),
}
CONTROL_SCHEDULER = {"timestep_spacing": "trailing"}
#: Which process timed a cached batch (a resumed run's times come from more than one).
RUN_ID = f"{time.time():.0f}"


def _slug(name: str) -> str:
    return name.split(" ")[0]


def paint_interleaved(
    inpainter: LesionInpainter,
    pairs: list,
    batch: int,
    cache: Path,
    candidates: dict[str, SamplerSettings] = CANDIDATES,
) -> tuple[dict[str, list[np.ndarray]], dict[str, dict]]:
    """Every candidate's painted images and its cost: rounds over batches, candidates in turn."""
    cache.mkdir(parents=True, exist_ok=True)
    seeds = list(range(len(pairs)))
    inpainter.inpaint(*pairs[0], seed=0, steps=2)  # warm-up, not timed
    images: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    cost = {name: {"seconds": 0.0, "unet_calls": 0, "processes": set()} for name in candidates}
    for start in range(0, len(pairs), batch):
        chunk = slice(start, start + batch)
        for name, settings in candidates.items():
            path = cache / f"{_slug(name)}-{start:04d}-{batch}.npz"
            if not path.is_file():
                counter = CallCounter(inpainter.unet)
                tic = time.perf_counter()
                out = inpainter.inpaint_batch(
                    [p[0] for p in pairs[chunk]],
                    [p[1] for p in pairs[chunk]],
                    seeds[chunk],
                    **settings.as_kwargs(),
                )
                seconds = time.perf_counter() - tic
                counter.handle.remove()
                buf = io.BytesIO()
                np.savez(buf, images=np.stack(out), seconds=seconds, calls=counter.calls, pid=RUN_ID)
                atomic_write_bytes(path, buf.getvalue())
                print(f"batch {start}: {name}: {seconds:.1f} s, {counter.calls} UNet calls", flush=True)
            saved = np.load(path)
            images[name].extend(saved["images"])
            cost[name]["seconds"] += float(saved["seconds"])
            cost[name]["unet_calls"] += int(saved["calls"])  # one call serves the whole batch
            cost[name]["processes"].add(str(saved["pid"]))
    n_batches = -(-len(pairs) // batch)
    return images, {
        name: {
            "unet_calls_per_image": c["unet_calls"] / n_batches,
            "seconds_per_image": round(c["seconds"] / len(pairs), 4),
            "timed_in_processes": len(c["processes"]),
        }
        for name, c in cost.items()
    }


def decide(rows: dict[str, dict], reference: str = REFERENCE) -> dict:
    """The declared rule (module docstring) applied to the measured rows."""
    ref = rows[reference]
    verdicts = {}
    for name, r in rows.items():
        if name == reference:
            continue
        checks = {
            "calls_at_most_10": r["unet_calls_per_image"] <= MAX_CALLS,
            "kid_melanoma_not_worse": r["kid_melanoma"]["mean"]
            <= ref["kid_melanoma"]["mean"] + ref["kid_melanoma"]["std"],
            "kid_non_melanoma_not_lower": r["kid_non_melanoma"]["mean"]
            >= ref["kid_non_melanoma"]["mean"] - ref["kid_non_melanoma"]["std"],
            "p_lesion_not_lower": r["mean_p_lesion"] >= ref["mean_p_lesion"] - P_MARGIN,
        }
        verdicts[name] = {**checks, "passes": all(checks.values())}
    passing = [n for n, v in verdicts.items() if v["passes"]]
    passing.sort(key=lambda n: (rows[n]["unet_calls_per_image"], rows[n]["kid_melanoma"]["mean"]))
    return {"verdicts": verdicts, "chosen": passing[0] if passing else None}


def region_crops(
    images: list[np.ndarray], masks: list[np.ndarray], size: int, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) crops in [-1, 1] and (N, 1, size, size) masks: each image's lesion region as the
    synthesizer crops it (:func:`models.data.regions.lesion_crop`: its mask's square box with the margin,
    resized to ``size``)."""
    out = [lesion_crop(img, msk, size, margin)[:2] for img, msk in zip(images, masks, strict=True)]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def region_laplacian(crops: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per crop: the mean |Laplacian| (3x3, per channel, [-1, 1] units) over the mask's interior (the mask
    eroded by one pixel, so the stencil reads region pixels only; the mask itself where erosion empties
    it, the whole crop where the mask is empty at this size)."""
    lap = F.conv2d(crops.float(), LAPLACIAN.expand(3, 1, 3, 3), groups=3).abs().mean(1, keepdim=True)
    masks = masks.float()
    inner = -F.max_pool2d(-masks, 3, stride=1)
    for fallback in (masks[..., 1:-1, 1:-1], torch.ones_like(inner)):
        empty = ~inner.flatten(1).any(1)[:, None, None, None]
        inner = torch.where(empty, fallback, inner)
    return ((lap * inner).flatten(1).sum(1) / inner.flatten(1).sum(1)).numpy()


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores (Mann-Whitney; ties count half)."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def crop_classifier(manifest, resolution: int, margin: float, epochs: int, cache: Path):
    """The crop classifier (melanoma vs non-melanoma region crops of the TRAIN split only, seed 0), trained
    once and cached under ``cache`` (keyed by the train rows, labels, resolution, margin and epochs)."""
    train = manifest.rows_in("train")
    labels = [int(r.label == LESION) for r in train]
    spec = {
        "manifest": str(MANIFEST.relative_to(REPO)),
        "rows": [r.number for r in train],
        "labels": labels,
        "resolution": resolution,
        "margin": margin,
        "epochs": epochs,
        "seed": CROP_SEED,
    }
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    path = cache / f"crop-classifier-{key}.pt"
    if path.is_file():
        with torch.random.fork_rng():
            net = resnet18(weights=None, num_classes=2)
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
    else:
        crops = LesionCrops.from_rows(train, resolution, margin, progress=True)
        tic = time.perf_counter()
        net = train_crop_classifier(
            crops.images, torch.tensor(labels), epochs=epochs, seed=CROP_SEED, progress=True
        )
        print(f"crop classifier: {time.perf_counter() - tic:.0f} s", flush=True)
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
    info = {
        "arch": "resnet18 (torchvision, weights=None), 2 classes",
        "train": f"{len(train)} train-split region crops ({sum(labels)} melanoma, "
        f"{len(labels) - sum(labels)} non-melanoma), {resolution} px, margin {margin}",
        "epochs": epochs,
        "seed": CROP_SEED,
        "cache": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
    }
    return net, info


def crop_check(
    inpainter: LesionInpainter,
    manifest,
    pairs: list,
    images: dict[str, list[np.ndarray]],
    cost: dict[str, dict],
    epochs: int,
    cache: Path,
) -> dict:
    """The second section (module docstring, "Crop check"): region crops of every painted set and of the
    real val references, judged by the train-split crop classifier, and the same rule applied post hoc."""
    size, margin = inpainter.resolution, inpainter.config.margin
    net, info = crop_classifier(manifest, size, margin, epochs, cache)
    masks = [p[1] for p in pairs]
    crops = {name: region_crops(imgs, masks, size, margin) for name, imgs in images.items()}
    crops["untouched sources"] = region_crops([p[0] for p in pairs], masks, size, margin)
    for name, label in (("real val melanoma", LESION), ("real val non-melanoma", NORMAL)):
        loaded = [r.load() for r in manifest.rows_in("val", label)]
        crops[name] = region_crops([x[0] for x in loaded], [x[1] for x in loaded], size, margin)
    features = {name: crop_features(net, c[0]).numpy() for name, c in crops.items()}
    p_lesion = {name: lesion_probability(net, c[0]).numpy() for name, c in crops.items()}
    noise = {name: region_laplacian(*c) for name, c in crops.items()}
    real_mel, real_non = features["real val melanoma"], features["real val non-melanoma"]
    noise_mel = float(noise["real val melanoma"].mean())
    settings = {**CANDIDATES, **CONTROLS}
    rows = {}
    for name in crops:
        scores = fidelity_scores(features[name], real_mel, real_non, seed=0)
        rows[name] = {
            **({"settings": settings[name].as_kwargs(), **cost[name]} if name in settings else {}),
            "n": len(features[name]),
            "kid_melanoma": scores["kid_synthetic_vs_real_lesion"],
            "kid_non_melanoma": scores["kid_synthetic_vs_real_normal"],
            "mean_p_lesion": round(float(p_lesion[name].mean()), 4),
            "region_laplacian": round(float(noise[name].mean()), 4),
            "region_laplacian_vs_real_melanoma": round(float(noise[name].mean()) / noise_mel, 3),
        }
    decision = decide({n: r for n, r in rows.items() if n in settings})
    return {
        "post_hoc": True,
        "classifier": {
            **info,
            "val_auc": round(auc(p_lesion["real val melanoma"], p_lesion["real val non-melanoma"]), 4),
        },
        "crop": f"lesion_crop: the mask's square box, margin {margin}, resized to {size} px",
        "noise": "mean |Laplacian| (3x3, per channel, [-1, 1] units) over the 64 px region mask's interior "
        "(eroded 1 px)",
        "controls": {n: {**s.as_kwargs(), **CONTROL_SCHEDULER} for n, s in CONTROLS.items()},
        "rows": rows,
        "decision": decision,
    }


def recommend(result: dict) -> dict:
    """What the crop check says about the shipped default (the whole-image rule's choice): keep it when it
    passes; otherwise the fastest passing shippable candidate (<= 10 calls), else revert to the reference."""
    shipped = result["decision"]["chosen"] or REFERENCE
    crop = result["crop_check"]
    verdicts, rows = crop["decision"]["verdicts"], crop["rows"]
    passing = sorted(
        (n for n, v in verdicts.items() if v["passes"]),
        key=lambda n: (rows[n]["unet_calls_per_image"], rows[n]["kid_melanoma"]["mean"]),
    )
    if shipped == REFERENCE:
        return {"shipped": shipped, "action": "keep", "recommended": shipped, "passing": passing}
    if verdicts[shipped]["passes"]:
        return {"shipped": shipped, "action": "keep", "recommended": shipped, "passing": passing}
    shippable = [n for n in passing if n in CANDIDATES]
    if shippable:
        return {"shipped": shipped, "action": "switch", "recommended": shippable[0], "passing": passing}
    return {"shipped": shipped, "action": "revert", "recommended": REFERENCE, "passing": passing}


def grid_png(pairs: list, images: dict[str, list[np.ndarray]], inpainter: LesionInpainter, k: int) -> bytes:
    """Rows: k val regions; columns: the source region, then each candidate's painting (same seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(images)
    fig, axes = plt.subplots(k, cols, figsize=(1.7 * cols, 1.8 * k), squeeze=False)
    for i in range(k):
        box, _ = inpainter.region(pairs[i][1])
        panels = [("val non-melanoma (source)", pairs[i][0])] + [(n, images[n][i]) for n in images]
        for j, (name, img) in enumerate(panels):
            axes[i, j].imshow(crop_square(img, box))
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(name.replace(" (", "\n("), fontsize=7)
    fig.suptitle(
        f"ISIC 2017 val regions, seed = row position; synthesizer {inpainter.model_version}", fontsize=8
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="val non-melanoma sources (seeded subset of 150)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "benchmarks" / "fast_sampler")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--crop-epochs", type=int, default=30, help="epochs of the crop check's classifier")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m loadtests.benchmarks.fast_sampler", *given])

    manifest = load_manifest(MANIFEST)
    normals, lesions = manifest.rows_in("val", NORMAL), manifest.rows_in("val", LESION)
    pick = np.sort(
        np.random.default_rng(0).choice(len(normals), size=min(args.n, len(normals)), replace=False)
    )
    sources = [normals[i] for i in pick]
    pairs = [r.load() for r in sources]
    inpainter = LesionInpainter.from_pretrained(MODEL, device="cpu", batch_size=args.batch)
    print(f"{len(pairs)} val {NORMAL} sources, torch threads {torch.get_num_threads()}", flush=True)
    cache = args.cache / f"n{len(pairs)}"
    images, cost = paint_interleaved(inpainter, pairs, args.batch, cache)

    classifier = load_classifier(CLASSIFIER)
    real_lesion = classifier_features(classifier, [r.load()[0] for r in lesions])
    real_normal_images = [r.load()[0] for r in normals]
    real_normal = classifier_features(classifier, real_normal_images)
    sets = {**images, "untouched sources": [p[0] for p in pairs]}
    rows = {}
    for name, imgs in sets.items():
        scores = fidelity_scores(classifier_features(classifier, imgs), real_lesion, real_normal, seed=0)
        rows[name] = {
            **({"settings": CANDIDATES[name].as_kwargs(), **cost[name]} if name in CANDIDATES else {}),
            "kid_melanoma": scores["kid_synthetic_vs_real_lesion"],
            "kid_non_melanoma": scores["kid_synthetic_vs_real_normal"],
            "mean_p_lesion": round(float(predict_images(classifier, imgs).mean()), 4),
        }
    decision = decide({n: r for n, r in rows.items() if n in CANDIDATES})
    result = {
        "command": command,
        "data": f"ISIC 2017 val only ({MANIFEST.relative_to(REPO)})",
        "model_version": inpainter.model_version,
        "resolution": inpainter.resolution,
        "n_sources": len(pairs),
        "source_rows": [r.number for r in sources],
        "n_real_melanoma": len(lesions),
        "n_real_non_melanoma": len(normals),
        "batch_size": args.batch,
        "features": f"penultimate layer of {CLASSIFIER.relative_to(REPO)} ({classifier.config.arch}, "
        f"{classifier.config.image_size} px, real data only); P(lesion) = its P({LESION}) (melanoma)",
        "reference_p_lesion": {
            "real val melanoma": round(
                float(predict_images(classifier, [r.load()[0] for r in lesions]).mean()), 4
            ),
            "real val non_melanoma": round(float(predict_images(classifier, real_normal_images).mean()), 4),
        },
        "reference": REFERENCE,
        "rows": rows,
        "decision": decision,
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    # The crop check (post hoc): the same paintings plus the control, judged on region crops.
    control = copy.copy(inpainter)  # the same UNet; only the control's scheduler config differs
    control.scheduler_config = {**inpainter.scheduler_config, **CONTROL_SCHEDULER}
    control_images, control_cost = paint_interleaved(control, pairs, args.batch, cache, CONTROLS)
    result["crop_check"] = crop_check(
        inpainter,
        manifest,
        pairs,
        {**images, **control_images},
        {**cost, **control_cost},
        args.crop_epochs,
        args.cache,
    )
    result["crop_check"]["recommendation"] = recommend(result)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "fast_sampler.png", grid_png(pairs, images, inpainter, k=4))
    from loadtests.benchmarks.fast_sampler_report import markdown

    write_report(args.out, "fast_sampler", result, markdown(result))
    print(json.dumps(decision, indent=1))
    print(json.dumps(result["crop_check"]["recommendation"], indent=1))
    return result


if __name__ == "__main__":
    main()
