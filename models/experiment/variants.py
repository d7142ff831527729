"""Synthesizer variants side by side (issue 11): fidelity to both classes, utility, cost, one row each.

Each variant is a finished experiment folder (``results.json``, its synthesizer and balanced set) that
shares the benchmark's split and seeds; this reads them and writes one table::

    python -m models.experiment.variants --out docs/results/isic2017-scarce/variants \\
        "unconditional (paper 000)=runs/experiments/isic2017-scarce" \\
        "class-conditional, guidance on val=runs/experiments/isic2017-scarce-cfg" ...

Nothing is recomputed and nothing is chosen on test here: the table only lays out what each run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from models.artifacts import atomic_write_json, atomic_write_text
from models.diffusion.sampler_settings import DEFAULTS
from models.experiment.report import comparison_text


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def variant_row(name: str, run: Path, configs: Path = Path("experiments")) -> dict:
    """The figures of one finished experiment folder (its synthesizer path is written relative to the
    folder of its config file, ``configs``)."""
    results = json.loads((run / "results.json").read_text())
    shown = results["meta"].get("synthesizer")  # None: no synthesizer (the copy-paste control)
    card = _json(Path(os.path.normpath(configs / shown)) / "model_card.json") if shown else None
    card = card or {}
    pretrain = _json(run / "synthesizer-pretrain" / "model_card.json")
    balance = _json(run / "balanced" / "balance.json") or {}
    acceptance = _json(run / "balanced" / "acceptance.json")
    guidance = _json(run / "guidance.json")
    sampler = DEFAULTS.with_overrides(**{k: balance.get(k) for k in ("steps", "strength", "eta", "resample")})
    calls = sampler.unet_calls if shown else 0  # the control pastes; it calls no UNet
    tries_per_kept = acceptance["tried"] / max(acceptance["kept"], 1) if acceptance else 1.0
    fidelity = results.get("fidelity") or {}
    synthetic = results["strategies"]["synthetic"]
    primary = results.get("primary") or {}
    return {
        "variant": name,
        "run": str(run),
        "resolution": card.get("config", {}).get("resolution"),
        "num_classes": card.get("config", {}).get("num_classes", 0),
        "guidance": balance.get("guidance", guidance["chosen"] if guidance else None),
        "train_seconds": round(card.get("train_seconds", 0.0) + (pretrain or {}).get("train_seconds", 0.0)),
        "train_steps": card.get("steps", 0) + (pretrain or {}).get("steps", 0),
        "unet_calls_per_kept_image": round(calls * tries_per_kept, 1),
        "acceptance_rate": acceptance["acceptance_rate"] if acceptance else None,
        "synthetic_kept": synthetic.get("n_synthetic_train"),
        "kid_vs_lesion": fidelity.get("kid_synthetic_vs_real_lesion"),
        "kid_vs_normal": fidelity.get("kid_synthetic_vs_real_normal"),
        "class_anchored": fidelity.get("class_anchored"),
        "none_auc": results["strategies"]["none"]["ensemble_auc"],
        "comparator_auc": results["strategies"].get(primary.get("against_resolved"), {}).get("ensemble_auc"),
        "auc": synthetic["ensemble_auc"],
        "auc_ci95": synthetic["ensemble_auc_ci95"],
        "sens_at_spec90": synthetic["ensemble_sens_at_spec90"],
        "vs_none": _comparison(synthetic.get("vs_baseline")),
        "primary_against": primary.get("against_resolved"),
        "vs_primary": _comparison(primary),
    }


def _comparison(c: dict | None) -> dict | None:
    if not c:
        return None
    keys = ("ensemble_auc_difference", "ensemble_delong_p", "paired_t_p", "seeds_better", "seeds_compared")
    return {k: c.get(k) for k in keys}


def _kid(k: dict | None) -> str:
    if not k:
        return "-"
    lo, hi = k["ci95"]
    return f"{k['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown(rows: list[dict], title: str, command: str) -> str:
    lines = [
        f"# {title}",
        "",
        "Fidelity: KID x100 of the synthetic lesions against held-out real melanomas and real non-melanomas",
        "(mean and 95% subset interval, features of the `none` classifier); class-anchored = the interval",
        "against non-melanomas lies above the one against melanomas. Utility: the `synthetic` strategy's",
        "seed-ensemble test AUC and sensitivity at 90% specificity, and its difference to `none` and to the",
        "pre-registered comparator. Cost: synthesizer training (seconds on these 2 cores, steps) and UNet",
        "calls per kept image (a guided step is one call of twice the batch; a filter's rejected candidates",
        "count too).",
        "",
        "| variant | px | train s (steps) | UNet calls / image | accepted | KID vs melanoma | KID vs non-melanoma "
        "| class-anchored | AUC | sens@90spec | vs none | vs primary comparator |",
        "|---|---:|---:|---:|---:|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        accepted = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}"
        guided = f", guidance {r['guidance']:g}" if isinstance(r["guidance"], int | float) else ""
        doubled = " (2x batch)" if guided and r["guidance"] != 1 else ""
        lines.append(
            f"| {r['variant']}{guided} | {r['resolution'] or '-'} | {r['train_seconds']} ({r['train_steps']}) "
            f"| {r['unet_calls_per_kept_image']:g}{doubled} | {accepted} | {_kid(r['kid_vs_lesion'])} "
            f"| {_kid(r['kid_vs_normal'])} | {'yes' if r['class_anchored'] else 'no'} | {r['auc']:.3f} "
            f"| {r['sens_at_spec90']:.3f} | {comparison_text(r['vs_none'])} | {r['primary_against']}: {comparison_text(r['vs_primary'])} |"
        )
    first = rows[0]
    reference = f"Reference (the same units in every run): `none` AUC {first['none_auc']:.3f}"
    if first["comparator_auc"] is not None:
        reference += f", `{first['primary_against']}` AUC {first['comparator_auc']:.3f}"
    return "\n".join(lines + ["", reference + ".", "", f"Command: `{command}`", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME=RUN_FOLDER, in the order of the table")
    parser.add_argument("--title", default="Synthesizer variants")
    parser.add_argument("--configs", type=Path, default=Path("experiments"), help="folder of the configs")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    rows = []
    for spec in args.variants:
        name, _, run = spec.partition("=")
        rows.append(variant_row(name, Path(run), args.configs))
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m models.experiment.variants " + " ".join(f'"{a}"' if " " in a else a for a in argv)
    atomic_write_json(args.out.with_suffix(".json"), {"variants": rows, "command": command})
    atomic_write_text(args.out.with_suffix(".md"), markdown(rows, args.title, command))
    print(markdown(rows, args.title, command))


if __name__ == "__main__":
    main()
