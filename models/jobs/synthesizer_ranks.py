"""What each torchrun rank of a data-parallel ``train-synthesizer`` job runs.

    torchrun ... -m models.jobs.synthesizer_ranks --params PARAMS.json --out DIR --progress-file P.json

The job (models/jobs/train_synthesizer.py) writes its normalised parameters to PARAMS.json and starts
this through models/torchrun.py, so every rank trains with exactly the job's settings (one mapping,
``train_synthesizer._settings``, for one process and for N). A user error is printed as one
``error: ...`` line (the launcher turns it into the job's error) and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--progress-file", type=Path)
    args = parser.parse_args(argv)

    from models.diffusion.train import train_synthesizer
    from models.distributed import DataParallel
    from models.errors import LesionsynthError
    from models.jobs.train_synthesizer import _settings
    from models.progress import JsonFileSink, set_sink

    if args.progress_file is not None and DataParallel.from_env().is_main:
        set_sink(JsonFileSink(args.progress_file))
    try:
        train_synthesizer(_settings(json.loads(args.params.read_text()), args.out))
    except LesionsynthError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
