"""The acceptance filter (issue 11, variant 4): a region classifier trained on train regions only keeps a
synthetic region only when it scores it as a lesion."""

import json
from functools import partial

import numpy as np
import pytest
from PIL import Image

from models.acceptance import AcceptanceFilter, FilterSettings, train_acceptance_filter
from models.balance import balance_dataset, read_decisions
from models.data.manifest import load_manifest
from models.errors import ConfigError
from models.experiment.config import load_config
from tests.conftest import experiment_yaml
from tests.test_balance import settings
from tests.test_class_conditional import SIZE, toy_manifest


@pytest.fixture(scope="module")
def split_toy(tmp_path_factory):
    """The red (lesion) / blue (normal) disc set with train, val and test rows."""
    manifest = toy_manifest(tmp_path_factory.mktemp("accept") / "data", n_per_class=16)
    lines = manifest.read_text().splitlines()
    splits = ["train"] * 20 + ["val"] * 6 + ["test"] * 6
    lines = [lines[0] + ",role"] + [
        f"{line.rsplit(',', 1)[0]},{split},{'a' if i % 3 else 'b'}"
        for i, (line, split) in enumerate(zip(lines[1:], splits, strict=True))
    ]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def trained_filter(split_toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("filter") / "filter"
    card = train_acceptance_filter(
        FilterSettings(split_toy, "lesion", "normal", out, resolution=SIZE, margin=0.1, epochs=15)
    )
    return out, card


def test_the_filter_learns_from_train_regions_only(split_toy, trained_filter):
    _, card = trained_filter
    rows = load_manifest(split_toy).rows
    train = {r.number for r in rows if r.split == "train"}
    assert set(card["image_rows"]) == train  # every train region, no val or test region
    assert card["regions_per_class"] == {"normal": 10, "lesion": 10}
    assert card["val_auc"] is not None and card["val_auc"] >= 0.9  # the colour is easy to tell apart


def test_roles_restrict_the_train_regions(split_toy, tmp_path):
    card = train_acceptance_filter(
        FilterSettings(split_toy, "lesion", "normal", tmp_path / "f", resolution=SIZE, epochs=1, roles=("b",))
    )
    rows = {r.number: r for r in load_manifest(split_toy).rows}
    assert card["image_rows"] and all(
        rows[n].split == "train" and rows[n].fields["role"] == "b" for n in card["image_rows"]
    )


def test_the_filter_scores_lesion_regions_above_normal_ones(split_toy, trained_filter):
    folder, _ = trained_filter
    accept = AcceptanceFilter.load(folder)
    test = load_manifest(split_toy).rows_in("test")
    scores = accept.score(*zip(*[r.load() for r in test], strict=True))
    labels = np.array([r.label == "lesion" for r in test])
    assert scores[labels].min() > scores[~labels].max()


def test_a_tampered_filter_is_refused(trained_filter, tmp_path):
    folder, _ = trained_filter
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(Exception, match="sha256"):
        AcceptanceFilter.load(copy)
    with pytest.raises(ConfigError, match="threshold"):
        AcceptanceFilter.load(folder, threshold=1.5)


def balance(demo_manifest, model, out, **overrides):
    return balance_dataset(settings(demo_manifest, model, out, **overrides))


@pytest.fixture(scope="module")
def demo_filter(demo_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-filter") / "filter"
    train_acceptance_filter(FilterSettings(demo_manifest, "lesion", "normal", out, resolution=32, epochs=2))
    return out


def test_balance_keeps_the_first_candidates_that_pass_and_resumes(
    tmp_path, demo_manifest, tiny_synth, demo_filter
):
    # Every candidate's score, from a run that accepts everything (candidate i is the same image whatever
    # the count: the plan is a prefix).
    everything = tmp_path / "all"
    balance(
        demo_manifest,
        tiny_synth,
        everything,
        count=6,
        acceptance_filter=demo_filter,
        accept_threshold=1e-9,
        max_tries=1,
    )
    scores = [score for _, (score, _) in sorted(read_decisions(everything / "acceptance.csv").items())]
    assert len(scores) == 6
    threshold = float(np.median(scores))
    expected = [i for i, s in enumerate(scores) if s >= threshold][:2]

    out = tmp_path / "filtered"
    filtered = partial(
        balance, demo_manifest, tiny_synth, out, count=2, acceptance_filter=demo_filter, max_tries=3
    )
    path = filtered(accept_threshold=threshold)
    synthetic = [r for r in load_manifest(path).rows if r.fields["synthetic"] == "1"]
    assert [r.fields["image_path"] for r in synthetic] == [f"synthetic/syn_{i:05d}.png" for i in expected]
    for i in expected:  # the same candidate is the same image
        assert np.array_equal(
            np.asarray(Image.open(out / f"synthetic/syn_{i:05d}.png")),
            np.asarray(Image.open(everything / f"synthetic/syn_{i:05d}.png")),
        )
    decisions = read_decisions(out / "acceptance.csv")
    rejected = [i for i, (_, ok) in decisions.items() if not ok]
    assert rejected and not any((out / f"synthetic/syn_{i:05d}.png").exists() for i in rejected)
    summary = json.loads((out / "acceptance.json").read_text())
    assert summary["kept"] == 2 and summary["tried"] == len(decisions) <= 6
    assert summary["acceptance_rate"] == round(summary["accepted"] / summary["tried"], 4)

    before = (out / "acceptance.csv").read_bytes()
    assert filtered(accept_threshold=threshold).read_bytes() == path.read_bytes()
    assert (out / "acceptance.csv").read_bytes() == before  # nothing made twice
    with pytest.raises(ConfigError, match="accept_threshold"):
        filtered(accept_threshold=0.9)


@pytest.mark.parametrize(
    "chosen, message",
    [({"threshold": 1.0}, "threshold"), ({"max_tries": 0}, "max_tries"), ({"tries": 3}, "mapping")],
)
def test_bad_filter_settings_are_refused(tmp_path, demo_manifest, chosen, message):
    with pytest.raises(ConfigError, match=message):
        load_config(experiment_yaml(tmp_path, demo_manifest, balance={"count": 4, "filter": chosen}))


def test_the_acceptance_figure_is_drawn_from_a_run(tmp_path, demo_manifest, tiny_synth, demo_filter):
    from models.evaluation.acceptance_plot import acceptance_figure, candidate_scores

    run = tmp_path / "run"
    run.mkdir()
    (run / "data").symlink_to(demo_manifest.parent)
    (run / "acceptance-filter").symlink_to(demo_filter)
    balance(demo_manifest, tiny_synth, run / "balanced", count=2, acceptance_filter=demo_filter, max_tries=2)
    scores = candidate_scores(run / "balanced" / "acceptance.csv")
    assert len(scores) == json.loads((run / "balanced" / "acceptance.json").read_text())["tried"]
    assert ((scores >= 0) & (scores <= 1)).all()
    png = acceptance_figure(run, tmp_path / "acceptance.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
