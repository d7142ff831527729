"""Issue 14 (part 3): decode_image before (HEAD) and after, interleaved in one process, CPU time per image.

    python docs/archive/benchmarks/issue14-profile/decode_ab.py [--rounds 20] [--base HEAD]

The 64 PH2 256 px PNGs of the services benchmark; each round decodes all of them once with each version
(alternating which goes first); per-image CPU (time.thread_time) median over rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--base", default="HEAD")
    args = p.parse_args()
    from loadtests.benchmarks.services_classifier import classifier_payloads
    from models.data import images as after

    src = subprocess.run(
        ["git", "show", f"{args.base}:models/data/images.py"], cwd=REPO, capture_output=True, check=True
    ).stdout
    old = Path("/tmp/issue14-images-before.py")
    old.write_bytes(src)
    spec = importlib.util.spec_from_file_location("images_before", old)
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    payloads, _ = classifier_payloads(64)
    for x in payloads:
        assert (before.decode_image(x) == after.decode_image(x)).all()
    times: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = [("before", before), ("after", after)][:: 1 if r % 2 == 0 else -1]
        for name, mod in order:
            t0 = time.thread_time()
            for x in payloads:
                mod.decode_image(x)
            times[name].append((time.thread_time() - t0) / len(payloads) * 1000)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    out = {
        "command": "python docs/archive/benchmarks/issue14-profile/decode_ab.py " + " ".join(sys.argv[1:]),
        "images": len(payloads),
        "rounds": args.rounds,
        "cpu_ms_per_image_median": med,
        "after_over_before": round(med["after"] / med["before"], 3),
        "identical_outputs": True,
    }
    (HERE / "decode_ab.json").write_text(json.dumps(out, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
