"""The PH2 split behind every figure in docs/ is reproducible from its recorded settings."""

import csv

from loadtests.benchmarks.common import PH2_SPLIT
from models.data.manifest import load_manifest
from models.data.split import add_split
from tests.conftest import REPO


def test_recorded_ph2_split_matches_the_code(ph2_manifest):
    manifest = load_manifest(ph2_manifest, check_files=False)
    add_split(manifest, **PH2_SPLIT)
    recorded = {
        r["orig_id"]: r["split"]
        for r in csv.DictReader((REPO / "docs/evidence/ph2_split.csv").read_text().splitlines())
    }
    assert {r.fields["orig_id"]: r.split for r in manifest.rows} == recorded
    train_melanoma = sum(1 for r in manifest.rows if r.split == "train" and r.label == "lesion")
    assert train_melanoma == 26
