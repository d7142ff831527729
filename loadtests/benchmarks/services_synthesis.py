"""The services benchmark's synthesis part (issue 14's target: <= 1.05x the in-process sampler).

Seconds per request of ``LesionInpainter.inpaint`` in this process vs the synthesis service over REST
/synthesize and gRPC Synthesize: sequential single requests, same model, images, masks and seeds, default
sampler settings, the three paths interleaved per request. Model: ``--synthesizer`` (with
``--synth-manifest``), else runs/ph2/synth-uncond when present, else a small demo synthesizer trained under
runs/bench-services/.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from loadtests.benchmarks.common import REPO
from loadtests.benchmarks.services_common import (
    PH2_SYNTH,
    SYNTHESIS_TARGET_RATIO,
    WORK,
    bench_service,
    metric_delta,
    scrape,
)
from services.harness import SERVICES

SYNTHESIS_TARGET = SERVICES["synthesis"].target


def synthesizer_and_pairs(
    n: int, model: Path | None = None, manifest: Path | None = None
) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]], str]:
    """(synthesizer folder, held-out normal image/mask pairs, data name); trains a demo one if needed.

    ``model`` and ``manifest`` (``--synthesizer``/``--synth-manifest``) pick another trained synthesizer
    and the split manifest whose val/test normal rows (with their own masks) are the requests."""
    from models.data.manifest import load_manifest
    from models.diffusion.folder import load_synthesizer

    if model is not None:
        if manifest is None:
            raise SystemExit(
                "--synthesizer needs --synth-manifest (its val/test normal rows are the requests)"
            )
        name = f"{manifest.relative_to(REPO) if manifest.is_relative_to(REPO) else manifest}, {model.name}"
    elif (PH2_SYNTH / "model_card.json").is_file():
        from loadtests.benchmarks.common import ph2_split_manifest

        model, manifest, name = PH2_SYNTH, ph2_split_manifest(), "PH2 128 px, runs/ph2/synth-uncond"
    else:
        from models.data.demo import write_demo_dataset
        from models.data.split import add_split
        from models.diffusion.train import TrainSettings, train_synthesizer

        manifest = WORK / "synth-demo-data" / "manifest.csv"
        if not manifest.is_file():
            loaded = load_manifest(write_demo_dataset(manifest.parent, size=64))
            add_split(loaded, test_fraction=0.2, val_fraction=0.1, seed=0)
            loaded.save()
        model = WORK / "synth-demo"
        if not (model / "model_card.json").is_file():
            # The Makefile's demo settings (32 px, "small", batch 8) with 300 steps instead of 1000.
            train_synthesizer(
                TrainSettings(
                    manifest=manifest,
                    lesion_label="lesion",
                    out=model,
                    resolution=32,
                    preset="small",
                    max_steps=300,
                    batch_size=8,
                    resume=True,
                )
            )
        name = "demo data (synthetic, non-medical; no PH2 synthesizer), 32 px demo synthesizer"
    lesion = load_synthesizer(model, verify=False).card["lesion_label"]
    rows = [
        r
        for r in load_manifest(manifest, check_files=False).rows
        if r.split in ("val", "test") and r.label != lesion and r.has_mask
    ]
    return model, [row.load() for row in rows[:n]], name


# -- synthesis ----------------------------------------------------------------------------------------
def bench_synthesis(args, log) -> dict:
    import grpc
    import httpx
    import torch

    from models.data.images import decode_image, encode_png
    from models.diffusion.inpaint import DEFAULTS, LesionInpainter
    from services.grpc_stubs import synthesis_pb2, synthesis_pb2_grpc

    model, pairs, data_name = synthesizer_and_pairs(
        args.synth_requests, args.synthesizer, args.synth_manifest
    )
    torch.set_num_threads(args.torch_threads)
    inpainter = LesionInpainter.from_pretrained(model, device="cpu")
    log(
        f"synthesis: {model} ({inpainter.resolution} px), {len(pairs)} held-out normal pairs, "
        f"{DEFAULTS.steps} steps, torch threads {torch.get_num_threads()}"
    )
    payloads = [(encode_png(img), encode_png(mask.astype(np.uint8) * 255)) for img, mask in pairs]
    seeds = list(range(1000, 1000 + len(pairs)))
    work = WORK / "service-synthesis"
    env = {
        "LESIONSYNTH_SYNTHESIZER": str(model),
        "LESIONSYNTH_MODEL_STORE": str(work),
        "LESIONSYNTH_DEVICE": "cpu",
        "OMP_NUM_THREADS": str(args.torch_threads),
    }
    times: dict[str, list[float]] = {"in_process": [], "rest_synthesize": [], "grpc_synthesize": []}
    max_diff = {"rest_synthesize": 0, "grpc_synthesize": 0}
    with (
        bench_service(SYNTHESIS_TARGET, work, env) as svc,
        httpx.Client(base_url=svc.url, timeout=600) as http,
    ):
        channel = grpc.insecure_channel(svc.grpc_target)
        stub = synthesis_pb2_grpc.SynthesisStub(channel)

        def rest(i: int) -> np.ndarray:
            image_png, mask_png = payloads[i]
            r = http.post(
                "/synthesize",
                files={"image": ("i.png", image_png, "image/png"), "mask": ("m.png", mask_png, "image/png")},
                data={"seed": str(seeds[i])},
            )
            if r.status_code != 200 or r.headers.get("x-steps") != str(DEFAULTS.steps):
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
            return r.content

        def grpc_call(i: int) -> np.ndarray:
            image_png, mask_png = payloads[i]
            reply = stub.Synthesize(
                synthesis_pb2.SynthesizeRequest(image=image_png, mask=mask_png, seed=seeds[i]), timeout=600
            )
            return reply.image_png

        def local(i: int) -> np.ndarray:
            image, mask = pairs[i]
            return inpainter.inpaint(image, mask, seed=seeds[i])

        calls = {"in_process": local, "rest_synthesize": rest, "grpc_synthesize": grpc_call}
        for fn in calls.values():  # warm-up, not timed
            fn(0)
        metrics0 = scrape(svc.url)
        for i in range(len(pairs)):
            expected = None
            for name, fn in calls.items():
                # A request's time ends when its result is in the caller's hands: the array in-process,
                # the PNG bytes from a service (decoding them for the pixel check is the client's work).
                t0 = time.perf_counter()
                out = fn(i)
                times[name].append(time.perf_counter() - t0)
                if isinstance(out, bytes):
                    out = decode_image(out)
                if expected is None:
                    expected = out
                else:
                    diff = int(np.abs(out.astype(int) - expected.astype(int)).max())
                    max_diff[name] = max(max_diff[name], diff)
        metrics1 = scrape(svc.url)
        channel.close()
    total, count = metric_delta(metrics0, metrics1, "lesionsynth_synthesis_seconds_per_image")
    server_sampling = total / count if count else None
    base_mean, base_median = float(np.mean(times["in_process"])), float(np.median(times["in_process"]))
    rows = {}
    for name, ts in times.items():
        mean, median = float(np.mean(ts)), float(np.median(ts))
        rows[name] = {
            "seconds_per_request": round(mean, 4),
            "median_s": round(median, 4),
            "min_s": round(min(ts), 4),
            "max_s": round(max(ts), 4),
            "ratio_vs_in_process": round(mean / base_mean, 3),
            "median_ratio_vs_in_process": round(median / base_median, 3),
            "max_pixel_diff_vs_in_process": max_diff.get(name, 0),
            "seconds_each": [round(t, 4) for t in ts],
        }
        log(f"  {name}: mean {mean:.3f} s, median {median:.3f} s per request ({mean / base_mean:.3f}x)")
    return {
        "data": data_name,
        "model": str(model.relative_to(REPO)),
        "model_version": inpainter.model_version,
        "resolution": inpainter.resolution,
        "sampler": DEFAULTS.as_kwargs(),
        "requests": len(pairs),
        "torch_threads": args.torch_threads,
        "service_env": {
            **env,
            "LESIONSYNTH_SYNTHESIZER": str(model.relative_to(REPO)),
            "LESIONSYNTH_MODEL_STORE": str(work.relative_to(REPO)),
        },
        "server_sampling_seconds_per_image": round(server_sampling, 4) if server_sampling else None,
        "target_ratio": SYNTHESIS_TARGET_RATIO,
        "meets_target": {
            name: rows[name]["ratio_vs_in_process"] <= SYNTHESIS_TARGET_RATIO
            for name in ("rest_synthesize", "grpc_synthesize")
        },
        "rows": rows,
    }
