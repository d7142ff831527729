"""The services benchmark's report: docs/benchmarks/services.md from the run's result dict."""

from __future__ import annotations

import io


def markdown(r: dict) -> str:
    env = r["environment"]
    out = io.StringIO()
    out.write(
        f"# Services benchmark: classifier and synthesis services vs the same models in-process\n\n"
        f"Command: `{r['command']}` (`make bench-services`). Date: {r['date']}; runtime {r['runtime_s']} s.\n"
        f"Machine: {env['cpus']} CPUs ({env['machine']}), Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f"; load average {env['load_average_at_start']} at start, {env['load_average_at_end']} at end.\n"
        "One run, one noisy shared machine: read the ratios, not the absolute figures.\n"
    )
    if "classifier" in r:
        c = r["classifier"]
        out.write(
            f"\n## Classifier: {c['clients']} concurrent clients, single-image requests\n\n"
            f"Model: {c['model']}. Data: {c['data']}, {c['n_images']} images (mean {c['mean_payload_kb']} KB).\n"
            f"{c['measured_s_per_row']:.0f} s measured per row, in {c['rounds']} interleaved rounds (every row "
            f"once per round; warm-up {c['warmup_s']['first_round']:g} s before a row's first round, "
            f"{c['warmup_s']['later_rounds']:g} s before later ones). ONNX Runtime intra-op threads "
            f"{c['ort_intra_op_threads']} in the in-process rows; the service runs its shipped defaults "
            "(4 REST threads, 1 ORT thread per inference). Service env: "
            + ", ".join(f"`{k}={v}`" for k, v in c["service_env"].items())
            + f"; auth {c['auth']}.\n\n"
            "| row | images/s | vs raw ORT | p50 ms | p95 ms | p99 ms | errors | CPU ms / image (ours) | "
            "CPU efficiency vs raw ORT | quiet windows: images/s, vs raw ORT | "
            "CPU cores: clients / server / others |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n"
        )
        for name, row in c["rows"].items():
            lat, cpu = row["latency_ms"], row["cpu_cores_used"]
            quiet = f"none of {c['rounds']}"
            if row["quiet_images_per_s"]:
                ratio = row["quiet_ratio_vs_raw_ort"]
                quiet = (
                    f"{row['quiet_images_per_s']}, {f'{ratio}x' if ratio else 'n/a'} "
                    f"({row['quiet_windows']} of {c['rounds']})"
                )
            out.write(
                f"| {name}: {row['what']} | {row['images_per_s']} | **{row['ratio_vs_raw_ort']}x** | "
                f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {row['errors']} | "
                f"{row['cpu_ms_per_image']['ours']} | {row['cpu_efficiency_vs_raw_ort']}x | "
                f"{quiet} | "
                f"{cpu['clients_and_in_process']} / "
                f"{cpu['server_processes']} / {cpu['other_processes']} |\n"
            )
        out.write(
            "\nimages/s and latency pool every round. CPU ms / image counts this process (clients, in-process "
            "rows) and the server processes; CPU efficiency is raw ORT's CPU ms / image over the row's (what "
            "the ratio would be on a dedicated, CPU-bound machine). Quiet windows: the row's measured windows "
            f"in which other processes used < {c['quiet_other_cores']} cores.\n"
        )
        costs = c["single_thread_costs"]
        out.write(
            "\nOne image, one caller (median ms): "
            + ", ".join(f"{k.removesuffix('_ms')} {v}" for k, v in costs.items())
            + ".\n"
        )
        served = {k: v["server_metrics"] for k, v in c["rows"].items() if "server_metrics" in v}
        if served:
            out.write(
                "Server-side means over the measured windows (from the service's /metrics): "
                + "; ".join(
                    f"{k}: handler.classify call (preprocess + backend) {v['mean_backend_call_ms']} ms, "
                    f"adaptive batch size {v['mean_adaptive_batch_size']}"
                    for k, v in served.items()
                )
                + ".\n"
            )
        out.write(f"Triton: {c['triton']}.\n")
        verdict = ", ".join(
            f"{name} {c['rows'][name]['ratio_vs_raw_ort']}x ({'met' if ok else 'MISSED'})"
            for name, ok in c["meets_target"].items()
        )
        out.write(f"\nTarget >= {c['target_ratio']}x raw ORT for the shipped service: {verdict}.\n")
    if "synthesis" in r:
        s = r["synthesis"]
        out.write(
            f"\n## Synthesis: sequential single requests\n\n"
            f"Model `{s['model']}` ({s['model_version']}, {s['resolution']} px); data: {s['data']}; "
            f"{s['requests']} held-out normal image/mask pairs, the same seeds on every path, sampler "
            f"{s['sampler']}; torch threads {s['torch_threads']} in-process and in the service "
            f"(`OMP_NUM_THREADS`). The paths are interleaved per request.\n\n"
            "| path | s / request (mean) | vs in-process | median s | median vs in-process | min | max | "
            "max pixel diff |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for name, row in s["rows"].items():
            out.write(
                f"| {name} | {row['seconds_per_request']} | {row['ratio_vs_in_process']}x | {row['median_s']} | "
                f"{row['median_ratio_vs_in_process']}x | {row['min_s']} | {row['max_s']} | "
                f"{row['max_pixel_diff_vs_in_process']} |\n"
            )
        verdict = ", ".join(
            f"{name} {s['rows'][name]['ratio_vs_in_process']}x mean, "
            f"{s['rows'][name]['median_ratio_vs_in_process']}x median ({'met' if ok else 'MISSED'})"
            for name, ok in s["meets_target"].items()
        )
        out.write(f"\nTarget <= {s['target_ratio']}x in-process: {verdict}.\n")
        out.write(
            f"\nThe service's own sampling time (its lesionsynth_synthesis_seconds_per_image metric): "
            f"{s['server_sampling_seconds_per_image']} s per image.\n"
        )
    return out.getvalue()
