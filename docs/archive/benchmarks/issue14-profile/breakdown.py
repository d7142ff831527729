"""Issue 14 (part 3): the per-image CPU breakdown table from profile/profile.json (profile_service.py).

    python docs/archive/benchmarks/issue14-profile/breakdown.py [REFERENCE_JSON]

perf's on-CPU split by library gives the shares (ORT; PNG inflate, Pillow, numpy; the interpreter, the
kernel, libc, grpcio's core); py-spy's split of the samples outside ORT, decode and preprocess divides the
interpreter + kernel + libc share among who ran it. ms per image: the share times the server CPU ms per image
of this run (contended: absolute ms inflated) and of the reference run (docs/benchmarks/services.json,
a quiet machine), whose rows are the same service.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
NATIVE = {
    "ORT session.run (onnxruntime)": ["onnxruntime"],
    "PNG inflate (zlib)": ["libz.so"],
    "Pillow (PNG unfilter, RGB packing, resize)": ["_imaging"],
    "numpy (normalise into NCHW float32)": ["_multiarray_umath"],
}
WORK = ("ORT", "image decode", "preprocess")


def rows_for(row: dict, ref_ms: float | None) -> list[tuple[str, float]]:
    perf = row["perf_by_library"]
    shares: dict[str, float] = {}
    for name, needles in NATIVE.items():
        shares[name] = sum(v for k, v in perf.items() if any(n in k for n in needles))
    rest = 100.0 - sum(shares.values())  # interpreter, kernel, libc, grpcio core, others
    py = {k: f for k, f in row["fractions"].items() if not k.startswith(WORK)}
    total_py = sum(py.values())
    split = {f"  {k}": rest * f / total_py for k, f in py.items()} if total_py else {}
    out = [(k, v) for k, v in shares.items()]
    out.append(("everything else: interpreter, kernel, libc, grpcio core (py-spy's split below)", rest))
    out += sorted(split.items(), key=lambda kv: -kv[1])
    return out


def main() -> None:
    profile = json.loads((HERE / "profile" / "profile.json").read_text())
    ref_path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "benchmarks" / "services.json"
    ref = json.loads(ref_path.read_text())["classifier"]["rows"]
    for name, row in profile["rows"].items():
        run_ms = row["server_cpu_ms_per_image"]
        ref_ms = ref.get(name, {}).get("cpu_ms_per_image", {}).get("server_processes")
        print(f"\n{name}: server CPU {run_ms} ms/image in this run, {ref_ms} in the reference run")
        print("| where | % of server CPU | ms/image (this run) | ms/image (reference) |")
        print("|---|---:|---:|---:|")
        for k, pct in rows_for(row, ref_ms):
            ref_s = f"{pct * ref_ms / 100:.2f}" if ref_ms else "-"
            print(f"| {k} | {pct:.1f} | {pct * run_ms / 100:.2f} | {ref_s} |")


if __name__ == "__main__":
    main()
