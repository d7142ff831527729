"""The services benchmark's classifier part (issue 14: service >= 0.95x raw ONNX Runtime; issue 4 asked 0.9x).

Rows, all on one ONNX file (a random-init ResNet-50 at 224 px made into a real classifier and serving
folder under runs/bench-services/, reused on rerun): raw ONNX Runtime and full in-process decoding, the
service over REST /classify, /classify_batch and gRPC, the service on a real Triton, and (diagnostic)
the service with other BentoML thread counts, set through LESIONSYNTH_CLASSIFIER_THREADS.
"""

from __future__ import annotations

import base64
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from loadtests.benchmarks.common import REPO
from loadtests.benchmarks.services_common import (
    CLASSIFIER_TARGET_RATIO,
    PH2_256,
    QUIET_OTHER_CORES,
    WORK,
    bench_service,
    run_load,
    summarize,
)
from models.export.graph import TRITON_NAME
from services.harness import SERVICES

CLASSIFIER_TARGET = SERVICES["classifier"].target
CLASSIFIER_ROWS = {
    "raw_ort": "raw onnxruntime, in-process, session.run on preprocessed images",
    "inproc_full": "in-process PNG decode + preprocess + onnxruntime (no transport)",
    "rest_classify": "service as shipped (4 REST threads, 1 ORT thread each), REST /classify (multipart PNG)",
    "rest_classify_batch": "service, REST /classify_batch (1 base64 PNG per request, adaptive batching)",
    "grpc_classify": "service, gRPC Classify",
    "triton_rest_classify": "service with TRITON_URL (PyTriton on CPU), REST /classify",
    "variant_rest_classify": "DIAGNOSTIC, not the shipped config: service with BentoML threads={threads} "
    "(LESIONSYNTH_CLASSIFIER_THREADS) and LESIONSYNTH_ORT_THREADS=1, REST /classify",
    "variant_grpc_classify": "DIAGNOSTIC: the same variant service (LESIONSYNTH_ORT_THREADS=1), gRPC Classify",
}


def classifier_serving_folder() -> tuple[Path, str]:
    """runs/bench-services/classifier-serving: a random-init ResNet-50 (224 px), exported for serving."""
    serving = WORK / "classifier-serving"
    if (serving / "model_card.json").is_file():
        return serving, "reused"
    import torch

    from models.classifier.config import ClassifierConfig, build_classifier
    from models.classifier.folder import write_classifier
    from models.export.serving import export_serving_folder

    model = WORK / "classifier"
    if not (model / "model_card.json").is_file():
        torch.manual_seed(0)
        config = ClassifierConfig("resnet50", 224)
        net = build_classifier(config).eval()
        card = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "positive_label": "lesion",
            "threshold": 0.5,
            "threshold_rule": "fixed 0.5: random-init weights, made for the services benchmark only",
            "target_sensitivity": None,
            "balance": "none",
            "seed": 0,
            "note": "NOT A TRAINED MODEL: random initialisation (nothing may be downloaded); timing only",
        }
        write_classifier(model, net.state_dict(), config, card)
    export_serving_folder(model, serving, instance_kind="cpu")
    return serving, "built"


def classifier_payloads(n: int) -> tuple[list[bytes], str]:
    """PNG file bytes of ``n`` images: PH2 at 256 px, else demo data."""
    from models.data.manifest import load_manifest

    if PH2_256.is_file():
        manifest, name = PH2_256, "PH2 (Mendonca et al., EMBC 2013), 256 px PNG files"
    else:
        from models.data.demo import write_demo_dataset

        manifest = WORK / "demo-data" / "manifest.csv"
        if not manifest.is_file():
            write_demo_dataset(manifest.parent, n_lesion=16, n_normal=48, size=256, seed=0)
        name = "demo data (synthetic, non-medical; PH2 absent), 256 px PNG files"
    rows = load_manifest(manifest, check_files=False).rows[:n]
    return [row.image_file.read_bytes() for row in rows], name


# -- classifier clients -------------------------------------------------------------------------------
def in_process_client(model, inputs: list[np.ndarray]):
    def request(i: int) -> None:
        model.backend.infer(inputs[i % len(inputs)])

    return lambda _k: (request, lambda: None)


def in_process_full_client(model, payloads: list[bytes]):
    from models.data.images import decode_image

    def request(i: int) -> None:
        model.probabilities([decode_image(payloads[i % len(payloads)])])

    return lambda _k: (request, lambda: None)


def rest_classify_client(url: str, payloads: list[bytes]):
    import httpx

    def make(_k: int):
        http = httpx.Client(base_url=url, timeout=60)

        def request(i: int) -> None:
            r = http.post("/classify", files={"image": ("x.png", payloads[i % len(payloads)], "image/png")})
            if r.status_code != 200 or "probability" not in r.json():
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        return request, http.close

    return make


def rest_batch_client(url: str, payloads: list[bytes]):
    import httpx

    encoded = [base64.b64encode(p).decode() for p in payloads]

    def make(_k: int):
        http = httpx.Client(base_url=url, timeout=60)

        def request(i: int) -> None:
            r = http.post("/classify_batch", json={"items": [{"image": encoded[i % len(encoded)]}]})
            if r.status_code != 200 or len(r.json()) != 1:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        return request, http.close

    return make


def grpc_classify_client(target: str, payloads: list[bytes]):
    import grpc

    from services.grpc_stubs import classifier_pb2, classifier_pb2_grpc

    messages = [classifier_pb2.ClassifyRequest(image=p) for p in payloads]

    def make(_k: int):
        channel = grpc.insecure_channel(target)
        stub = classifier_pb2_grpc.ClassifierStub(channel)

        def request(i: int) -> None:
            stub.Classify(messages[i % len(messages)], timeout=60)

        return request, channel.close

    return make


def single_thread_costs(model, payloads: list[bytes], repeats: int = 30) -> dict:
    """Median milliseconds of each stage for one image, one caller (where a request's time goes)."""
    from models.classifier.screening import preprocess
    from models.data.images import decode_image

    def median_ms(fn) -> float:
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return round(float(np.median(times)) * 1000, 2)

    images = [decode_image(p) for p in payloads]
    inputs = [preprocess([im], model.size, model.mean, model.std) for im in images]
    n = len(payloads)
    return {
        "png_decode_ms": median_ms(lambda i: decode_image(payloads[i % n])),
        "preprocess_ms": median_ms(lambda i: preprocess([images[i % n]], model.size, model.mean, model.std)),
        "base64_encode_decode_ms": median_ms(lambda i: base64.b64decode(base64.b64encode(payloads[i % n]))),
        "ort_batch1_ms": median_ms(lambda i: model.backend.infer(inputs[i % n])),
    }


def start_triton(args, serving: Path, stack: contextlib.ExitStack, log):
    """A real Triton (PyTriton, loadtests/triton_server.py) on the serving folder's repository, or a reason."""
    if args.no_triton:
        return None, "skipped (--no-triton)"
    from loadtests.triton_server import TRITON_VENV, TritonProcess

    python = TRITON_VENV / "bin" / "python"
    if not python.exists():
        return None, f"skipped: no {TRITON_VENV} (run `make triton-env`)"
    log_dir = WORK / "triton"
    log_dir.mkdir(parents=True, exist_ok=True)
    triton = TritonProcess(serving / "triton", TRITON_NAME, python, log_dir)
    triton.env["OMP_NUM_THREADS"] = str(args.ort_threads)  # serve_onnx.py's ORT intra-op threads
    stack.callback(triton.stop)
    triton.start()
    log(f"  Triton ready at {triton.grpc_url}")
    return triton, (
        "PyTriton 0.7 (tritonserver 2.51): its python backend runs onnxruntime on the same ONNX file "
        f"({args.ort_threads} intra-op threads), dynamic batching (max queue delay 2 ms); "
        "the row's server CPU includes Triton"
    )


def bench_classifier(args, log) -> dict:
    from models.classifier.screening import OnnxRuntimeBackend, ScreeningModel, preprocess
    from models.data.images import decode_image

    serving, how = classifier_serving_folder()
    payloads, data_name = classifier_payloads(args.images)
    log(f"classifier: {serving} ({how}); {len(payloads)} images from {data_name}")
    model = ScreeningModel(serving, OnnxRuntimeBackend(serving / "model.onnx", threads=args.ort_threads))
    inputs = [preprocess([decode_image(p)], model.size, model.mean, model.std) for p in payloads]
    costs = single_thread_costs(model, payloads)
    log(f"  one image, one caller (median ms): {costs}")
    # The service as shipped: its own thread defaults (LESIONSYNTH_CLASSIFIER_THREADS=4 REST threads, one
    # ONNX Runtime thread per inference), not the raw ORT row's --ort-threads.
    service_env = {"LESIONSYNTH_CLASSIFIER": str(serving), "OMP_NUM_THREADS": "1"}

    with contextlib.ExitStack() as stack:
        # Every server is up for the whole measurement, so the rows can be interleaved round by round.
        work = WORK / "service-classifier"
        svc = stack.enter_context(
            bench_service(CLASSIFIER_TARGET, work, {**service_env, "LESIONSYNTH_MODEL_STORE": str(work)})
        )
        log(f"  classifier service ready at {svc.url} (gRPC {svc.grpc_target})")
        on_service = dict(server_pids=[svc.proc.pid], metrics_url=svc.url)
        rows = {
            "raw_ort": (in_process_client(model, inputs), {}),
            "inproc_full": (in_process_full_client(model, payloads), {}),
            "rest_classify": (rest_classify_client(svc.url, payloads), on_service),
            "rest_classify_batch": (rest_batch_client(svc.url, payloads), on_service),
            "grpc_classify": (grpc_classify_client(svc.grpc_target, payloads), on_service),
        }
        if args.variant_threads:
            # Diagnostic: what other BentoML thread counts with single-threaded ORT runs would give (the
            # service reads both from its environment; no service file is changed).
            work = WORK / "service-classifier-variant"
            env = {
                **service_env,
                "LESIONSYNTH_CLASSIFIER_THREADS": str(args.variant_threads),
                "LESIONSYNTH_ORT_THREADS": "1",
                "LESIONSYNTH_MODEL_STORE": str(work),
            }
            var = stack.enter_context(bench_service(CLASSIFIER_TARGET, work, env))
            log(
                f"  variant service (BentoML threads={args.variant_threads}, ORT threads 1) ready at {var.url}"
            )
            on_variant = dict(server_pids=[var.proc.pid], metrics_url=var.url)
            rows["variant_rest_classify"] = (rest_classify_client(var.url, payloads), on_variant)
            rows["variant_grpc_classify"] = (grpc_classify_client(var.grpc_target, payloads), on_variant)
        triton, triton_note = start_triton(args, serving, stack, log)
        if triton is not None:
            work = WORK / "service-classifier-triton"
            env = {**service_env, "LESIONSYNTH_MODEL_STORE": str(work), "TRITON_URL": triton.grpc_url}
            via = stack.enter_context(bench_service(CLASSIFIER_TARGET, work, env))
            log(f"  classifier service on Triton ready at {via.url}")
            rows["triton_rest_classify"] = (
                rest_classify_client(via.url, payloads),
                dict(server_pids=[via.proc.pid, triton.proc.pid], metrics_url=via.url),
            )

        per_round = args.duration / args.rounds
        measured: dict[str, list[dict]] = {name: [] for name in rows}
        for k in range(args.rounds):
            for name, (make_client, extra) in rows.items():
                warmup = args.warmup if k == 0 else args.round_warmup
                r = run_load(make_client, args.clients, warmup, per_round, **extra)
                measured[name].append(r)
                log(
                    f"  round {k + 1}/{args.rounds} {name}: {len(r['latencies']) / per_round:.1f} img/s, "
                    f"{r['errors']} errors, other processes {r['cpu']['other_processes'] / r['wall']:.2f} cores"
                )

    results = {
        name: {"what": CLASSIFIER_ROWS[name].format(threads=args.variant_threads), **summarize(rounds)}
        for name, rounds in measured.items()
    }
    raw = results["raw_ort"]
    for r in results.values():
        r["ratio_vs_raw_ort"] = round(r["images_per_s"] / raw["images_per_s"], 3)
        # Over the quiet windows only (each row's own; nearest to a dedicated machine).
        r["quiet_ratio_vs_raw_ort"] = (
            round(r["quiet_images_per_s"] / raw["quiet_images_per_s"], 3)
            if r["quiet_images_per_s"] and raw["quiet_images_per_s"]
            else None
        )
        # Images per CPU-second of ours relative to raw ORT: what the ratio would be on a dedicated,
        # CPU-bound machine; much less sensitive to other processes than images/s.
        r["cpu_efficiency_vs_raw_ort"] = round(
            raw["cpu_ms_per_image"]["ours"] / max(r["cpu_ms_per_image"]["ours"], 1e-9), 3
        )
        r["ratio_vs_raw_ort_by_round"] = [
            round(a / b, 3) if b else None
            for a, b in zip(r["images_per_s_by_round"], raw["images_per_s_by_round"], strict=True)
        ]
    return {
        "data": data_name,
        "model": "ResNet-50, 224 px, 1 logit, random-init weights (timing only), ONNX opset 20",
        "serving_folder": str(serving.relative_to(REPO)),
        "n_images": len(payloads),
        "mean_payload_kb": round(sum(map(len, payloads)) / len(payloads) / 1024, 1),
        "clients": args.clients,
        "rounds": args.rounds,
        "warmup_s": {"first_round": args.warmup, "later_rounds": args.round_warmup},
        "measured_s_per_row": args.duration,
        "ort_intra_op_threads": args.ort_threads,
        "variant_bentoml_threads": args.variant_threads or None,
        "service_env": {**service_env, "LESIONSYNTH_CLASSIFIER": str(serving.relative_to(REPO))},
        "auth": "off (no LESIONSYNTH_API_TOKEN; localhost)",
        "single_thread_costs": costs,
        "triton": triton_note,
        "quiet_other_cores": QUIET_OTHER_CORES,
        "target_ratio": CLASSIFIER_TARGET_RATIO,
        "meets_target": {
            name: results[name]["ratio_vs_raw_ort"] >= CLASSIFIER_TARGET_RATIO
            for name in ("rest_classify", "rest_classify_batch", "grpc_classify")
        },
        "rows": results,
    }
