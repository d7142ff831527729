"""The ISIC 2017 benchmark's fixed split: the committed role file is what its recorded plan draws, and it is
what every ISIC experiment config uses, with a test set no protocol trains on."""

import csv
from collections import Counter

import pytest
import yaml

from models.data.manifest import load_manifest, read_manifest
from models.data.roles import draw_roles, read_role_file
from models.experiment.config import load_config
from models.experiment.prepare import synthesizer_manifest, write_role_split
from tests.conftest import REPO

ISIC = REPO.parent / "shared" / "data" / "isic2017" / "manifest_256.csv"
SPLIT = REPO / "docs" / "evidence" / "isic2017_split.csv"
PLAN = REPO / "experiments" / "isic2017-roles.yaml"
CONFIGS = [
    "isic2017-scarce.yaml",
    "isic2017-donor.yaml",
    "isic2017-gpu.yaml",
    "isic2017-scarce-cfg.yaml",
    "isic2017-donor-cfg.yaml",
]


@pytest.fixture(scope="module")
def isic_manifest():
    if not ISIC.is_file():
        pytest.skip(f"ISIC 2017 data not present at {ISIC.parent} (real-data tests skip without it)")
    return ISIC


def test_recorded_split_is_what_the_plan_draws(isic_manifest):
    plan = yaml.safe_load(PLAN.read_text())
    rows = read_manifest(isic_manifest).rows
    drawn = draw_roles(rows, plan["counts"], plan["seed"], plan["stratify"])
    recorded = {r["image_path"]: r["role"] for r in csv.DictReader(SPLIT.read_text().splitlines())}
    assert drawn == recorded


def test_recorded_split_counts():
    roles = read_role_file(SPLIT)  # also refuses an image listed twice
    counts = roles.summary()
    assert (
        counts[("test", "lesion")] >= 120
        and counts[("test", "non_melanoma")] == 3 * counts[("test", "lesion")]
    )
    assert counts[("val", "lesion")] >= 20
    pool = counts[("pool", "lesion")] / (counts[("pool", "lesion")] + counts[("pool", "non_melanoma")])
    assert 0.025 <= pool <= 0.035  # the scarce site: about 3% melanomas
    assert sum(counts.values()) == 2000
    # Stratified by diagnosis: the test set holds keratoses and nevi as the dataset does (254 / 1372).
    test_dx = Counter(e["diagnosis"] for e in roles.entries if e["role"] == "test")
    assert abs(test_dx["seborrheic_keratosis"] / 360 - 254 / 1626) < 0.01


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_use_the_recorded_split(name):
    config = load_config(REPO / "experiments" / name)
    assert config.role_file == SPLIT
    assert config.split["roles"]["test"] == "test" and config.split["min_test_positives"] >= 120
    assert config.primary["strategy"] == "synthetic"  # pre-registered in every ISIC config
    assert config.balance["source_roles"] == ["pool"] and config.balance["mode"] == "replace"


@pytest.mark.parametrize("name", CONFIGS[:2])
def test_prepared_split_matches_the_file(tmp_path, isic_manifest, name):
    config = load_config(REPO / "experiments" / name)
    path = write_role_split(
        load_manifest(isic_manifest, check_files=False), config, tmp_path / "manifest.csv"
    )
    prepared = load_manifest(path, check_files=False)
    test_file = {e["image_path"] for e in read_role_file(SPLIT).entries if e["role"] == "test"}
    test_prepared = {r.fields["orig_id"] for r in prepared.rows_in("test")}
    assert test_prepared == {p.rsplit("/", 1)[-1].removesuffix(".jpg") for p in test_file}
    train_ids = {r.fields["orig_id"] for r in prepared.rows_in("train")}
    assert not train_ids & test_prepared
    train_roles = Counter(r.fields["role"] for r in prepared.rows_in("train"))
    synth_rows = load_manifest(synthesizer_manifest(config, path), check_files=False).rows_in(
        "train", "lesion"
    )
    if name == "isic2017-scarce.yaml":
        assert set(train_roles) == {"pool"} and len(synth_rows) == 25
    else:
        assert set(train_roles) == {"pool", "donor"} and len(synth_rows) == 199
        assert {r.fields["role"] for r in synth_rows} == {"donor"}
