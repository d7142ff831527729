"""Choose a class-conditional synthesizer's guidance scale on validation data, never on test (issue 11).

For each candidate scale, half of the val normals get synthetic lesions painted into their own masks;
on the features of a classifier trained on the train split only (an experiment's ``none`` unit), the
synthetic images are compared with the val real lesions and with the *other* half of the val normals
(not their own sources, which share everything outside the mask):

* KID(synthetic, real lesion), lower better; KID(synthetic, real normal), higher better (paper 001);
* the classifier's mean P(lesion) on the synthetic images.

The chosen scale has the largest gap KID(vs normal) - KID(vs lesion): the most class-anchored.

    python -m models.experiment.guidance --config experiments/isic2017-scarce-cfg.yaml \
        --features runs/experiments/isic2017-scarce/units/none/seed-0/classifier --scales 1,2,4
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.artifacts import atomic_write_json, atomic_write_text
from models.classifier.folder import load_classifier
from models.classifier.predict import predict_images
from models.data.manifest import load_manifest
from models.diffusion.inpaint import LesionInpainter
from models.evaluation.fidelity import classifier_features, fidelity_scores
from models.experiment.config import ExperimentConfig, load_config
from models.experiment.prepare import SAMPLER_KEYS, prepare_split, prepare_synthesizer

log = logging.getLogger(__name__)
RESULT = "guidance.json"


def choose_guidance(
    config: ExperimentConfig, scales: Sequence[float], feature_classifier: Path, progress: bool = True
) -> dict:
    """Measure every scale on val (see the module docstring); write and return ``<out>/guidance.json``."""
    split_path = prepare_split(config, progress)
    model = prepare_synthesizer(config, split_path, progress)
    rows = load_manifest(split_path, check_files=False).rows
    val_normals = [r for r in rows if r.split == "val" and r.label == config.normal_label]
    val_lesions = [r for r in rows if r.split == "val" and r.label == config.positive_label]
    sources, references = val_normals[::2], val_normals[1::2]
    classifier = load_classifier(feature_classifier)
    lesion_images = [r.load()[0] for r in val_lesions]
    normal_images = [r.load()[0] for r in references]
    ref_lesion = classifier_features(classifier, lesion_images)
    ref_normal = classifier_features(classifier, normal_images)
    inpainter = LesionInpainter.from_pretrained(model, batch_size=16)
    sampler = {k: config.balance[k] for k in SAMPLER_KEYS if k in config.balance}
    seed = int(config.balance.get("seed", 0))
    pairs = [r.load() for r in sources]
    measured = {}
    for scale in scales:
        tic = time.perf_counter()
        images = inpainter.inpaint_batch(
            [img for img, _ in pairs],
            [msk for _, msk in pairs],
            [seed * 100_003 + i for i in range(len(pairs))],
            guidance=float(scale),
            **sampler,
        )
        seconds = time.perf_counter() - tic
        scores = fidelity_scores(classifier_features(classifier, images), ref_lesion, ref_normal)
        lesion, normal = scores["kid_synthetic_vs_real_lesion"], scores["kid_synthetic_vs_real_normal"]
        measured[f"{float(scale):g}"] = {
            "kid_vs_real_lesion": lesion,
            "kid_vs_real_normal": normal,
            "anchoring_gap": normal["mean"] - lesion["mean"],
            "class_anchored": scores["class_anchored"],
            "mean_p_lesion": float(np.mean(predict_images(classifier, images))),
            "seconds_per_image": seconds / len(images),
        }
        log.info("guidance %g: gap %.4f", scale, measured[f"{float(scale):g}"]["anchoring_gap"])
    chosen = max(measured, key=lambda k: measured[k]["anchoring_gap"])
    result = {
        "chosen": float(chosen),
        "rule": "largest KID(vs val real normal) - KID(vs val real lesion)",
        "scales": measured,
        "synthesizer": model.name,
        "synthesizer_version": inpainter.model_version,
        "feature_classifier": classifier.model_version,
        "n": {"synthetic": len(sources), "real_lesion": len(val_lesions), "real_normal": len(references)},
        "reference_p_lesion": {
            "val real lesion": float(np.mean(predict_images(classifier, lesion_images))),
            "val real normal": float(np.mean(predict_images(classifier, normal_images))),
        },
    }
    atomic_write_json(config.out / RESULT, result)
    atomic_write_text(config.out / "guidance.md", markdown(result, config.name))
    return result


def markdown(result: dict, name: str) -> str:
    lines = "\n".join(
        f"| {scale}{' (chosen)' if float(scale) == result['chosen'] else ''} | "
        f"{v['kid_vs_real_lesion']['mean']:.4f} [{v['kid_vs_real_lesion']['ci95'][0]:.4f}, "
        f"{v['kid_vs_real_lesion']['ci95'][1]:.4f}] | {v['kid_vs_real_normal']['mean']:.4f} "
        f"[{v['kid_vs_real_normal']['ci95'][0]:.4f}, {v['kid_vs_real_normal']['ci95'][1]:.4f}] | "
        f"{v['anchoring_gap']:+.4f} | {'yes' if v['class_anchored'] else 'no'} | {v['mean_p_lesion']:.3f} | "
        f"{v['seconds_per_image']:.2f} |"
        for scale, v in result["scales"].items()
    )
    n, ref = result["n"], result["reference_p_lesion"]
    return f"""# Guidance scale chosen on val: {name}

Synthesizer `{result["synthesizer_version"]}`; features and P(lesion) from classifier
`{result["feature_classifier"]}` (trained on the train split only). {n["synthetic"]} val normals painted;
references: {n["real_lesion"]} val real lesions and {n["real_normal"]} other val normals. Rule:
{result["rule"]}. Intervals: subset percentiles (conservative). For reference, the classifier's mean
P(lesion) is {ref["val real lesion"]:.3f} on val real lesions and {ref["val real normal"]:.3f} on val normals.

| guidance | KID vs real lesion [95%] | KID vs real normal [95%] | gap | class-anchored | mean P(lesion) | s per image |
|---|---|---|---|---|---|---|
{lines}
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="a classifier folder (train split only)")
    parser.add_argument("--scales", default="1,2,4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = choose_guidance(
        load_config(args.config), [float(v) for v in args.scales.split(",")], args.features
    )
    print(f"chosen guidance {result['chosen']:g}")


if __name__ == "__main__":
    main()
