"""Benchmark: INT8 vs FP32 screening on these CPUs, in one run, same images (issue 14, part 1).

    python -m loadtests.benchmarks.int8 --classifier runs/int8/resnet50-128 \
        --manifest runs/experiments/isic2017-donor/data/manifest.csv [--rounds 6] [--duration 18] [--no-service]

Declared before the run (issue 14): INT8 earns the CPU clinics' default only at >= 2x FP32 throughput on
these 2 cores with an AUC loss <= 0.005 on the ISIC 2017 test split. The test split is read once, here,
for this one question (does the INT8 graph rank the test cases like its FP32 twin); nothing is chosen on
it: the INT8 graph is calibrated on the manifest's train rows only (models/export/int8.py), the threshold
is the FP32 model's own (chosen on val by train-classifier).

What is measured:

* accuracy: both graphs score every test row (the screening code's decode + preprocess, embedded ONNX
  Runtime): AUC with DeLong's CI each, the paired difference (DeLong test, and a stratified paired
  bootstrap CI), sensitivity at 90% specificity each and its paired bootstrap difference, and how many
  decisions agree, each graph at its own threshold (chosen on val at export) and both at FP32's;
* throughput, raw ONNX Runtime in this process on preprocessed images: one caller at batch 1 (latency
  bound) and 16 concurrent callers at batch 1 (the services benchmark's ``raw_ort`` row), FP32 and INT8
  interleaved round by round, for the trained model at its own size and for the production shape (the
  services benchmark's ResNet-50 at 224 px; random weights, timing only);
* through the service: the classifier service twice (LESIONSYNTH_CLASSIFIER_PRECISION=fp32 and int8, its
  shipped thread defaults), REST /classify at 16 clients, interleaved with the raw rows.

Writes docs/benchmarks/int8.json and int8.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from loadtests.benchmarks.common import REPO, write_report
from loadtests.benchmarks.services_classifier import in_process_client, rest_classify_client
from loadtests.benchmarks.services_common import bench_service, run_load, summarize
from services.harness import SERVICES

WORK = REPO / "runs" / "bench-int8"
#: Declared targets (issue 14).
TARGET_SPEEDUP = 2.0
MAX_AUC_LOSS = 0.005
PRECISIONS = ("fp32", "int8")


def export_both(classifier: Path, serving: Path, manifest: Path, rows: int, log) -> dict:
    """A serving folder with model.onnx and model.int8.onnx (reused when its card matches)."""
    from models.export.serving import export_serving_folder, read_card

    card_path = serving / "model_card.json"
    if card_path.is_file():
        card = read_card(serving)
        source = _classifier_version(classifier)
        calib = card.get("int8", {}).get("calibration", {})
        current = "threshold" in card.get("int8", {})  # exports before the INT8 graph had its own
        if card.get("source_model_version") == source and calib.get("max_rows") == rows and current:
            log(f"  reusing {serving} (source {source})")
            return card
    log(f"  exporting {classifier} -> {serving} (FP32 + INT8, calibration on <= {rows} train rows)")
    return export_serving_folder(
        classifier,
        serving,
        instance_kind="cpu",
        int8=True,
        calibration_manifest=manifest,
        calibration_rows=rows,
    )


def _classifier_version(folder: Path) -> str:
    import json

    return json.loads((folder / "model_card.json").read_text())["model_version"]


def _arch(classifier: Path) -> str:
    import json

    return json.loads((classifier / "config.json").read_text())["arch"]


def _reusable_throughput(path: Path, shapes: dict) -> dict:
    import json

    old = json.loads(path.read_text())
    for name, (_folder, card, _) in shapes.items():
        was = old["models"].get(name, {})
        if (was.get("fp32_sha256"), was.get("int8_sha256")) != (
            card["int8"]["fp32_sha256"],
            card["int8"]["sha256"],
        ):
            raise SystemExit(
                f"{path}: its {name} graphs are not these; measure again (drop --throughput-from)"
            )
    return {**old["throughput"], "measured": old.get("throughput_measured", old["date"])}


def sessions(serving: Path, threads: int) -> dict:
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel

    graphs = {"fp32": serving / "model.onnx", "int8": serving / "model.int8.onnx"}
    return {
        p: ScreeningModel(serving, OnnxRuntimeBackend(graphs[p], threads=threads), precision=p)
        for p in PRECISIONS
    }


# -- accuracy -------------------------------------------------------------------------------------------
def paired_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, statistic, n_boot: int) -> dict:
    """statistic(y, b) - statistic(y, a) with a stratified paired bootstrap CI (the same cases each draw)."""
    from models.evaluation.resampling import bootstrap_ci

    def diff(y_idx, idx):
        i = idx.astype(int)
        return statistic(y_idx, b[i]) - statistic(y_idx, a[i])

    ci = bootstrap_ci(y, np.arange(len(y), dtype=float), diff, n_boot=n_boot)
    return {"difference": round(ci.value, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)], "n_boot": n_boot}


def accuracy(models: dict, manifest: Path, n_boot: int, log) -> dict:
    from models.data.images import decode_image
    from models.data.manifest import load_manifest
    from models.evaluation.roc import (
        auc_confidence_interval,
        delong_test,
        roc_auc,
        sensitivity_at_specificity,
        sensitivity_specificity,
    )

    fp32 = models["fp32"]
    rows = load_manifest(manifest).rows_in("test")
    y = np.array([int(r.label == fp32.positive_label) for r in rows])
    log(f"  scoring the test split: {len(rows)} rows ({int(y.sum())} {fp32.positive_label})")
    images = [decode_image(r.image_file) for r in rows]
    scores = {
        p: np.concatenate([m.probabilities(images[i : i + 32]) for i in range(0, len(images), 32)])
        for p, m in models.items()
    }
    a, b = scores["fp32"].astype(np.float64), scores["int8"].astype(np.float64)
    per = {}
    for p, s in (("fp32", a), ("int8", b)):
        ci = auc_confidence_interval(y, s)
        own = models[p].threshold
        sens, spec = sensitivity_specificity(y, s, own)
        per[p] = {
            "auc": round(ci.auc, 4),
            "auc_ci95_delong": [round(float(ci.low), 4), round(float(ci.high), 4)],
            "sensitivity_at_90_specificity": round(sensitivity_at_specificity(y, s, 0.9), 4),
            "threshold": own,
            "threshold_rule": models[p].threshold_rule,
            "at_own_threshold": {"sensitivity": round(sens, 4), "specificity": round(spec, 4)},
        }
    # The INT8 graph under the FP32 threshold: what serving it without its own threshold would do.
    sens, spec = sensitivity_specificity(y, b, fp32.threshold)
    per["int8"]["at_fp32_threshold"] = {"sensitivity": round(sens, 4), "specificity": round(spec, 4)}
    test = delong_test(y, a, b)
    agree = (a >= fp32.threshold) == (b >= models["int8"].threshold)
    agree_same = (a >= fp32.threshold) == (b >= fp32.threshold)
    return {
        "split": "test",
        "n": len(rows),
        "positives": int(y.sum()),
        "threshold": fp32.threshold,
        "per_precision": per,
        "auc_difference_int8_minus_fp32": {
            "delong": {
                "difference": round(test.difference, 4),
                "z": round(test.z, 3),
                "p": round(test.p_value, 4),
            },
            "bootstrap": paired_difference(y, a, b, roc_auc, n_boot),
        },
        "sens_at_90_spec_difference_int8_minus_fp32": paired_difference(
            y, a, b, lambda yy, s: sensitivity_at_specificity(yy, s, 0.9), n_boot
        ),
        "decisions_agree_at_fp32_threshold": int(agree_same.sum()),
        "decisions_agree": int(agree.sum()),
        "max_abs_probability_difference": round(float(np.abs(a - b).max()), 4),
        "mean_abs_probability_difference": round(float(np.abs(a - b).mean()), 5),
    }


# -- throughput -----------------------------------------------------------------------------------------
def inputs_for(model, payload_images: list[np.ndarray]) -> list[np.ndarray]:
    from models.classifier.screening import preprocess

    return [preprocess([im], model.size, model.mean, model.std) for im in payload_images]


def load_payloads(manifest: Path, n: int) -> tuple[list[bytes], list[np.ndarray]]:
    """``n`` train-row images as PNG bytes (the request payloads) and decoded arrays (train rows: no test
    image is used for timing)."""
    from PIL import Image

    from models.data.images import decode_image
    from models.data.manifest import load_manifest

    rows = load_manifest(manifest).rows_in("train")[:n]
    images = [decode_image(r.image_file) for r in rows]
    payloads = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    return payloads, images


def throughput(rows: dict, args, log) -> dict:
    """Interleaved rounds: every row once per round, so background load hits them alike."""
    per_round = args.duration / args.rounds
    measured: dict[str, list[dict]] = {name: [] for name in rows}
    for k in range(args.rounds):
        for name, (make_client, clients, extra) in rows.items():
            warmup = args.warmup if k == 0 else 1.0
            r = run_load(make_client, clients, warmup, per_round, **extra)
            measured[name].append(r)
            log(
                f"  round {k + 1}/{args.rounds} {name}: {len(r['latencies']) / per_round:.1f} img/s, "
                f"{r['errors']} errors, other processes {r['cpu']['other_processes'] / r['wall']:.2f} cores"
            )
    out = {}
    for name, rounds in measured.items():
        s = summarize(rounds)
        out[name] = {
            k: s[k]
            for k in (
                "images_per_s",
                "images_per_s_by_round",
                "errors",
                "first_error",
                "latency_ms",
                "cpu_ms_per_image",
                "cpu_cores_used",
                "other_processes_cores_by_round",
            )
        }
    return out


def speedups(results: dict) -> dict:
    """INT8 / FP32 images/s of each paired row, pooled and per round (the per-round spread is the noise)."""
    out = {}
    for name in results:
        if not name.endswith("_int8"):
            continue
        base = name[: -len("_int8")]
        a, b = results[base + "_fp32"], results[name]
        out[base] = {
            "speedup": round(b["images_per_s"] / a["images_per_s"], 2),
            "by_round": [
                round(x / y, 2) if y else None
                for x, y in zip(b["images_per_s_by_round"], a["images_per_s_by_round"], strict=True)
            ],
            "cpu_ms_per_image_ratio": round(
                a["cpu_ms_per_image"]["ours"] / max(b["cpu_ms_per_image"]["ours"], 1e-9), 2
            ),
        }
    return out


def service_client_checked(url: str, precision: str, payloads: list[bytes]):
    import httpx

    info = httpx.post(url + "/info", timeout=30).json()
    if info.get("precision") != precision:
        raise RuntimeError(f"service at {url} serves {info.get('precision')!r}, not {precision!r}")
    return rest_classify_client(url, payloads)


# -- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", type=Path, required=True, help="trained classifier folder")
    ap.add_argument("--manifest", type=Path, required=True, help="split manifest (train: calibration, test)")
    ap.add_argument("--calibration-rows", type=int, default=256)
    ap.add_argument(
        "--production-shape",
        type=Path,
        default=REPO / "runs" / "bench-services" / "classifier",
        help="classifier folder of the production shape (ResNet-50 224 px; random weights)",
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--ort-threads", type=int, default=2, help="intra-op threads of the raw rows")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=18.0, help="measured seconds per row (all rounds)")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--images", type=int, default=32, help="distinct payload images")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--no-service", action="store_true")
    ap.add_argument(
        "--throughput-from",
        type=Path,
        help="reuse the throughput section of an earlier run's JSON (its graphs' sha256 must match)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    args = ap.parse_args(argv)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    load_start = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)
    log("export")
    trained = WORK / "serving-trained"
    card = export_both(args.classifier, trained, args.manifest, args.calibration_rows, log)
    shapes = {"trained": (trained, card, _arch(args.classifier))}
    if args.production_shape and (args.production_shape / "model_card.json").is_file():
        prod = WORK / "serving-224"
        card = export_both(args.production_shape, prod, args.manifest, args.calibration_rows, log)
        shapes["224"] = (prod, card, _arch(args.production_shape))

    log("accuracy (test split, read once)")
    models = {name: sessions(folder, args.ort_threads) for name, (folder, *_) in shapes.items()}
    acc = accuracy(models["trained"], args.manifest, args.n_boot, log)
    log(f"  {acc['per_precision']} diff {acc['auc_difference_int8_minus_fp32']}")

    log("throughput")
    previous = _reusable_throughput(args.throughput_from, shapes) if args.throughput_from else None
    payloads, images = load_payloads(args.manifest, args.images)
    rows: dict = {}
    for name, pair in models.items():
        for p in PRECISIONS:
            inputs = inputs_for(pair[p], images)
            rows[f"raw_batch1_1client_{name}_{p}"] = (in_process_client(pair[p], inputs), 1, {})
            rows[f"raw_batch1_{args.clients}clients_{name}_{p}"] = (
                in_process_client(pair[p], inputs),
                args.clients,
                {},
            )
    service_note = "skipped (--no-service)"
    with contextlib.ExitStack() as stack:
        if not args.no_service and previous is None:
            for p in PRECISIONS:
                work = WORK / f"service-{p}"
                env = {
                    "LESIONSYNTH_CLASSIFIER": str(trained),
                    "LESIONSYNTH_MODEL_STORE": str(work),
                    "LESIONSYNTH_CLASSIFIER_PRECISION": p,
                }
                svc = stack.enter_context(bench_service(SERVICES["classifier"].target, work, env))
                log(f"  service ({p}) ready at {svc.url}")
                rows[f"service_rest_{args.clients}clients_trained_{p}"] = (
                    service_client_checked(svc.url, p, payloads),
                    args.clients,
                    dict(server_pids=[svc.proc.pid], metrics_url=svc.url),
                )
            service_note = (
                "the classifier service as shipped (4 REST threads, 1 ORT thread each, OMP_NUM_THREADS=1), "
                "REST /classify, multipart PNG, one image per request"
            )
        if previous is None:
            tp = throughput(rows, args, log)
        else:
            log(f"  reusing the throughput rows of {args.throughput_from} (same graphs)")
            stack.close()
            tp = previous["rows"]
            args.rounds, args.duration = previous["rounds"], previous["measured_s_per_row"]
            service_note = previous["service"]

    result = {
        "command": "python -m loadtests.benchmarks.int8 " + " ".join(argv or []),
        "throughput_measured": previous["measured"]
        if previous
        else datetime.now(UTC).isoformat(timespec="seconds"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime_s": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": __import__("onnxruntime").__version__,
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "targets": {"speedup": TARGET_SPEEDUP, "max_auc_loss": MAX_AUC_LOSS},
        "models": {
            name: {
                "serving_folder": str(folder.relative_to(REPO)),
                "arch": arch,
                "source_model_version": c["source_model_version"],
                "image_size": c["image_size"],
                "fp32_sha256": c["int8"]["fp32_sha256"],
                "int8_sha256": c["int8"]["sha256"],
                "calibration": c["int8"]["calibration"],
                "quantisation": c["int8"]["quantisation"],
                "graph_bytes": {
                    "fp32": (folder / "model.onnx").stat().st_size,
                    "int8": (folder / "model.int8.onnx").stat().st_size,
                },
            }
            for name, (folder, c, arch) in shapes.items()
        },
        "accuracy": acc,
        "throughput": {
            "clients": args.clients,
            "ort_intra_op_threads_raw": args.ort_threads,
            "rounds": args.rounds,
            "measured_s_per_row": args.duration,
            "service": service_note,
            "rows": tp,
            "int8_speedup": speedups(tp),
        },
    }
    loss = acc["per_precision"]["fp32"]["auc"] - acc["per_precision"]["int8"]["auc"]
    best = max(v["speedup"] for v in result["throughput"]["int8_speedup"].values())
    result["verdict"] = {
        "auc_loss": round(loss, 4),
        "auc_loss_within_target": loss <= MAX_AUC_LOSS,
        "speedups": {k: v["speedup"] for k, v in result["throughput"]["int8_speedup"].items()},
        "best_speedup": best,
    }
    write_report(args.out, "int8", result, markdown(result))
    return result


def markdown(r: dict) -> str:
    acc, tp = r["accuracy"], r["throughput"]
    m = r["models"]["trained"]
    lines = [
        "# INT8 vs FP32 screening on a 2-core CPU (issue 14)",
        "",
        f"Command: `{r['command'].strip()}` (`make bench-int8`). Date: {r['date']}; runtime {r['runtime_s']} s.",
        f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, onnxruntime "
        f"{r['machine']['onnxruntime']}; load average {r['machine']['load_average_start']} at start, "
        f"{r['machine']['load_average_end']} at end. One run on a shared machine: read the ratios.",
        "",
        f"Declared before the run: INT8 is worth serving at >= {r['targets']['speedup']}x FP32 throughput with "
        f"an AUC loss <= {r['targets']['max_auc_loss']} on the ISIC 2017 test split (read once, for this question).",
        "",
        "## Models",
        "",
        "| shape | arch | source model | size px | FP32 graph MB | INT8 graph MB | calibration |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name, v in r["models"].items():
        c = v["calibration"]
        lines.append(
            f"| {name} | {v['arch']} | `{v['source_model_version']}` | {v['image_size']} | {v['graph_bytes']['fp32'] / 1e6:.1f} | "
            f"{v['graph_bytes']['int8'] / 1e6:.1f} | {c['rows']} train rows of {c['train_rows_available']} |"
        )
    q = m["quantisation"]
    lines += [
        "",
        f"Quantisation: {q['method']}, {q['format']}, activations {q['activation_type']}, weights "
        f"{q['weight_type']}, per-channel {q['per_channel']}, {q['calibration_method']} calibration. `trained`: "
        f"trained here from scratch on the manifest's train rows ({m['calibration']['train_rows_available']} "
        "images); `224`: the services benchmark's ResNet-50 at 224 px, random weights (timing only).",
        "",
        f"## Accuracy: ISIC 2017 test split ({acc['n']} images, {acc['positives']} melanoma), `trained` model",
        "",
        "| graph | AUC | 95% CI (DeLong) | sensitivity at 90% specificity | threshold (chosen on val) | "
        "sens / spec at it |",
        "|---|---:|---|---:|---:|---|",
    ]
    for p, v in acc["per_precision"].items():
        t = v["at_own_threshold"]
        lines.append(
            f"| {p} | {v['auc']:.4f} | {v['auc_ci95_delong'][0]:.3f}-{v['auc_ci95_delong'][1]:.3f} | "
            f"{v['sensitivity_at_90_specificity']:.3f} | {v['threshold']:.4f} | "
            f"{t['sensitivity']:.3f} / {t['specificity']:.3f} |"
        )
    t = acc["per_precision"]["int8"]["at_fp32_threshold"]
    lines.append(
        f"| int8 at the FP32 threshold | | | | {acc['threshold']:.4f} | "
        f"{t['sensitivity']:.3f} / {t['specificity']:.3f} |"
    )
    d, s = acc["auc_difference_int8_minus_fp32"], acc["sens_at_90_spec_difference_int8_minus_fp32"]
    lines += [
        "",
        f"INT8 - FP32: AUC {d['delong']['difference']:+.4f} (DeLong z {d['delong']['z']}, p {d['delong']['p']}; "
        f"paired stratified bootstrap 95% CI {d['bootstrap']['ci95'][0]:+.4f} to {d['bootstrap']['ci95'][1]:+.4f}, "
        f"{d['bootstrap']['n_boot']} draws); sensitivity at 90% specificity {s['difference']:+.4f} "
        f"(95% CI {s['ci95'][0]:+.4f} to {s['ci95'][1]:+.4f}). Decisions, each graph at its own threshold: "
        f"{acc['decisions_agree']} of {acc['n']} agree (both at the FP32 threshold: "
        f"{acc['decisions_agree_at_fp32_threshold']}); "
        f"|p_int8 - p_fp32| max {acc['max_abs_probability_difference']}, mean {acc['mean_abs_probability_difference']}.",
        "",
        f"## Throughput ({tp['rounds']} interleaved rounds, {tp['measured_s_per_row']} s measured per row; "
        f"measured {r['throughput_measured']})",
        "",
        f"Raw rows: ONNX Runtime in this process on preprocessed images, {tp['ort_intra_op_threads_raw']} intra-op "
        f"threads, batch 1 per call. Service rows: {tp['service']}.",
        "",
        "| row | images/s | p50 ms | p95 ms | CPU ms / image |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in tp["rows"].items():
        lines.append(
            f"| {name} | {v['images_per_s']} | {v['latency_ms']['p50']} | {v['latency_ms']['p95']} | "
            f"{v['cpu_ms_per_image']['ours']} |"
        )
    lines += [
        "",
        "| row pair | INT8 / FP32 images/s | per round | FP32 / INT8 CPU ms per image |",
        "|---|---:|---|---:|",
    ]
    for name, v in tp["int8_speedup"].items():
        lines.append(f"| {name} | **{v['speedup']}x** | {v['by_round']} | {v['cpu_ms_per_image_ratio']}x |")
    v = r["verdict"]
    lines += [
        "",
        "## Verdict",
        "",
        f"AUC loss {v['auc_loss']:+.4f} ({'within' if v['auc_loss_within_target'] else 'OVER'} the "
        f"{r['targets']['max_auc_loss']} budget); INT8 speedups {v['speedups']} (target {r['targets']['speedup']}x).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
