"""Role splits (models.data.roles) and the experiment's use of them: a fixed test set that no protocol
trains on, roles mapped to splits, a synthesizer that learns from chosen roles, converted normals."""

import json
import shutil
from collections import Counter

import pytest

from models.classifier.balancing import Strategy
from models.data.manifest import Row, load_manifest, read_manifest
from models.data.roles import (
    assign_splits,
    check_test_not_trained,
    draw_roles,
    read_role_file,
    write_role_file,
)
from models.errors import ConfigError, ParameterError
from models.experiment.config import load_config
from models.experiment.prepare import prepare, synthesizer_manifest, write_role_split
from models.experiment.runner import run_experiment
from tests.test_experiment import write_config


def rows(n_pos=30, n_neg=90):
    out = []
    for i in range(n_pos + n_neg):
        label = "lesion" if i < n_pos else "normal"
        diagnosis = "melanoma" if i < n_pos else ("nevus" if i % 3 else "keratosis")
        out.append(
            Row(i + 2, {"image_path": f"img/{i:03d}.png", "label": label, "diagnosis": diagnosis}, None)
        )
    return out


COUNTS = {
    "test": {"lesion": 10, "normal": 30},
    "val": {"lesion": 5, "normal": 15},
    "pool": {"lesion": 3, "normal": "rest"},
    "donor": {"lesion": "rest"},
}


def test_draw_roles_counts_strata_and_determinism():
    data = rows()
    roles = draw_roles(data, COUNTS, seed=1)
    counts = Counter((roles[r.fields["image_path"]], r.label) for r in data)
    assert counts == {
        ("test", "lesion"): 10, ("test", "normal"): 30, ("val", "lesion"): 5, ("val", "normal"): 15,
        ("pool", "lesion"): 3, ("pool", "normal"): 45, ("donor", "lesion"): 12,
    }  # fmt: skip
    # Normals are 2/3 nevus, 1/3 keratosis (30 of 90): the test role keeps those proportions.
    test_dx = Counter(r.fields["diagnosis"] for r in data if roles[r.fields["image_path"]] == "test")
    assert test_dx == {"melanoma": 10, "nevus": 20, "keratosis": 10}
    assert draw_roles(list(reversed(data)), COUNTS, seed=1) == roles  # row order does not matter
    assert draw_roles(data, COUNTS, seed=2) != roles
    # A later role's count never moves an earlier role's rows.
    bigger_val = {**COUNTS, "val": {"lesion": 6, "normal": 20}}
    other = draw_roles(data, bigger_val, seed=1)
    assert {p for p, r in other.items() if r == "test"} == {p for p, r in roles.items() if r == "test"}
    with pytest.raises(ConfigError, match="only 20 are left"):
        draw_roles(data, {"test": {"lesion": 10}, "val": {"lesion": 25}}, seed=1)
    with pytest.raises(ConfigError, match="have no role"):
        draw_roles(data, {"test": {"lesion": 10, "normal": 5}}, seed=1)


@pytest.fixture()
def role_dataset(tmp_path, demo_manifest):
    """The demo images copied with a role file: test/val/pool/donor."""
    data = tmp_path / "data"
    shutil.copytree(demo_manifest.parent, data)
    manifest = read_manifest(data / demo_manifest.name)
    counts = {
        "test": {"lesion": 4, "normal": 8},
        "val": {"lesion": 3, "normal": 6},
        "pool": {"lesion": 3, "normal": 12},
        "donor": {"lesion": "rest", "normal": "rest"},
    }
    roles_csv = write_role_file(tmp_path / "roles.csv", manifest.rows, draw_roles(manifest.rows, counts, 0))
    return data / demo_manifest.name, roles_csv


def experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth, **overrides):
    """tests/test_experiment.py's config with a role split, donor-trained synthesizer, replace-mode balance
    and a primary comparison (each overridable)."""
    roles_config = {
        "name": "roles",
        "split": {
            "file": str(roles_csv),
            "roles": {"pool": "train", "donor": "train", "val": "val", "test": "test"},
            "min_test_positives": 4,
        },
        "synthesizer": {"model": str(tiny_synth), "roles": ["donor"]},
        "balance": {"count": 4, "steps": 3, "source_roles": ["pool"], "mode": "replace"},
        "strategies": ["none", "weighted-loss", "synthetic"],
        "primary": {"strategy": "synthetic", "against": "best-classical"},
    }
    return write_config(tmp_path, manifest, tiny_synth, **{**roles_config, **overrides})


def test_config_refuses_a_small_test_set_and_bad_roles(tmp_path, role_dataset, tiny_synth):
    manifest, roles_csv = role_dataset

    def config(**split):
        base = {"file": str(roles_csv), "roles": {"pool": "train", "val": "val", "test": "test"}}
        return experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth, split={**base, **split})

    with pytest.raises(
        ConfigError, match="test set holds 4 'lesion' images, below split.min_test_positives = 120"
    ):
        load_config(config(min_test_positives=120))
    with pytest.raises(ConfigError, match="does not hold"):
        load_config(config(roles={"pool": "train", "site-b": "train", "test": "test"}))
    with pytest.raises(ConfigError, match="maps no role to 'test'"):
        load_config(config(roles={"pool": "train", "val": "val"}))
    with pytest.raises(ConfigError, match="one of train, val, test"):
        load_config(config(roles={"pool": "training", "test": "test"}))
    # synthesizer.roles must be roles that train (here donor is left out of the mapping).
    with pytest.raises(
        ConfigError, match=r"synthesizer.roles must be a non-empty list of roles mapped to train"
    ):
        load_config(config())
    with pytest.raises(ConfigError, match="primary.strategy"):
        load_config(
            experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth, primary={"strategy": "oversample"})
        )
    with pytest.raises(ParameterError, match="balance.mode must be one of add, replace, got 'swap'"):
        load_config(experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth, balance={"mode": "swap"}))
    with pytest.raises(ConfigError, match="unknown key.s. in balance: step;"):
        load_config(experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth, balance={"step": 3}))


def test_a_test_image_in_training_is_refused(tmp_path, role_dataset, tiny_synth):
    manifest, roles_csv = role_dataset
    entries = roles_csv.read_text().splitlines()
    test_line = next(line for line in entries if line.endswith(",test"))
    # Listed twice, once as test and once in the pool: refused when the config is read.
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join(entries + [test_line[: -len("test")] + "pool"]) + "\n")
    with pytest.raises(ConfigError, match="lists an image more than once"):
        load_config(experiment_yaml(tmp_path, manifest, twice, tiny_synth))
    # The same bytes under another name in training: refused before anything trains.
    config = load_config(experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth))
    m = load_manifest(manifest, check_files=False)
    test_path = test_line.split(",")[0]
    test_row = next(r for r in m.rows if r.fields["image_path"] == test_path)
    pool_path = next(line.split(",")[0] for line in entries if line.endswith(",pool"))
    (manifest.parent / pool_path).write_bytes(test_row.image_file.read_bytes())
    with pytest.raises(ConfigError, match="same image bytes as test row"):
        write_role_split(load_manifest(manifest, check_files=False), config, tmp_path / "split.csv")
    # A manifest row the role file does not know is refused, not silently trained on.
    with pytest.raises(ConfigError, match="not in roles.csv"):
        extra = Row(99, {"image_path": "elsewhere.png", "label": "lesion"}, manifest.parent)
        assign_splits([extra], read_role_file(roles_csv), {"test": "test"})
    check_test_not_trained([])  # nothing to compare: fine


def test_roles_experiment_end_to_end(tmp_path, role_dataset, tiny_synth):
    manifest, roles_csv = role_dataset
    config = load_config(experiment_yaml(tmp_path, manifest, roles_csv, tiny_synth))
    results = run_experiment(config, progress=False)
    split = load_manifest(config.out / "data" / "manifest.csv", check_files=False)
    roles = read_role_file(roles_csv).roles
    for row in split.rows:  # every row carries the split its role maps to
        original = row.fields["image_path"].split("data/")[-1]
        assert row.fields["role"] == roles[original]
        assert row.split == config.split["roles"][row.fields["role"]]
    # The synthesizer's manifest holds the donor's train rows only.
    synth_rows = load_manifest(synthesizer_manifest(config, config.out / "data" / "manifest.csv")).rows
    assert synth_rows and {r.fields["role"] for r in synth_rows} == {"donor"}
    # Replace mode: the 4 converted pool normals are marked and leave the synthetic strategies' pool.
    balanced = load_manifest(config.out / "balanced" / "manifest.csv", check_files=False)
    converted = [r for r in balanced.rows if r.fields.get("converted") == "1"]
    assert len(converted) == 4 and {r.fields["role"] for r in converted} == {"pool"}
    sources = {r.fields["source_image"] for r in balanced.rows if r.fields["synthetic"] == "1"}
    assert {r.fields["image_path"] for r in converted} == sources
    assert Strategy("synthetic").drops_row(converted[0].fields) and not Strategy("none").drops_row(
        converted[0].fields
    )
    n_train = len(split.rows_in("train"))
    cards = {
        s: json.loads((config.out / "units" / s / "seed-0" / "classifier" / "model_card.json").read_text())
        for s in ("none", "synthetic")
    }
    assert cards["none"]["train"]["n_pool"] == n_train
    assert cards["synthetic"]["train"]["n_pool"] == n_train - 4 + 4
    assert cards["synthetic"]["train"]["n_synthetic"] == 4
    # The primary comparison is resolved on val, and the report says it was declared before the run.
    primary = results["primary"]
    classical = {n: results["strategies"][n]["val_auc_mean"] for n in ("none", "weighted-loss")}
    assert primary["against_resolved"] == max(classical, key=classical.get) == results["best_classical"]
    assert primary["strategy"] == "synthetic" and "vs_best_classical" in results["strategies"]["synthetic"]
    report = (config.out / "report.md").read_text()
    assert "Primary comparison (pre-registered" in report and "sens. at 90% spec." in report
    meta = json.loads((config.out / "results.json").read_text())["meta"]
    assert meta["split"]["file"] == "roles.csv"  # relative to the config, no home directories


def test_a_variant_reuses_the_classical_units_of_an_identical_run(tmp_path, role_dataset, tiny_synth):
    manifest, roles_csv = role_dataset
    first = load_config(
        experiment_yaml(
            tmp_path, manifest, roles_csv, tiny_synth, strategies=["none", "weighted-loss"], primary=None
        )
    )
    run_experiment(first, progress=False)
    variant_dir = tmp_path / "variant"
    variant_dir.mkdir()
    variant = load_config(
        experiment_yaml(
            variant_dir,
            manifest,
            roles_csv,
            tiny_synth,
            reuse_units=str(first.out),
            strategies=["none", "weighted-loss", "synthetic"],
        )
    )
    results = run_experiment(variant, progress=False)
    for strategy in ("none", "weighted-loss"):  # taken, not retrained: the same scores
        ours = json.loads((variant.out / "units" / strategy / "seed-0" / "test_scores.json").read_text())
        theirs = json.loads((first.out / "units" / strategy / "seed-0" / "test_scores.json").read_text())
        assert ours["scores"] == theirs["scores"] and ours["reused_from"].startswith(str(first.out))
    assert "reused_from" not in json.loads(
        (variant.out / "units" / "synthetic" / "seed-0" / "test_scores.json").read_text()
    )
    assert results["strategies"]["none"]["auc_mean"] > 0
    # A run with other classifier settings cannot stand in.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = load_config(
        experiment_yaml(
            other_dir,
            manifest,
            roles_csv,
            tiny_synth,
            reuse_units=str(first.out),
            classifier={"arch": "resnet18", "image_size": 32, "epochs": 3, "batch_size": 16},
        )
    )
    with pytest.raises(ConfigError, match="differs in classifier"):
        run_experiment(other, progress=False)


def test_guidance_is_chosen_on_val_only(tmp_path, role_dataset, tiny_synth, tiny_classifier):
    from models.experiment.guidance import choose_guidance

    manifest, roles_csv = role_dataset
    synthesizer = {
        "num_classes": 2,
        "resolution": 32,
        "preset": "tiny",
        "max_steps": 6,
        "batch_size": 4,
        "roles": ["pool"],
    }
    config = load_config(
        experiment_yaml(
            tmp_path,
            manifest,
            roles_csv,
            tiny_synth,
            synthesizer=synthesizer,
            balance={"count": 4, "steps": 2, "guidance": "chosen-on-val"},
        )
    )
    with pytest.raises(ConfigError, match="guidance.json does not exist"):
        prepare(config, progress=False)
    result = choose_guidance(config, [0.0, 1.0, 3.0], tiny_classifier, progress=False)
    assert set(result["scales"]) == {"0", "1", "3"}
    gaps = {float(k): v["anchoring_gap"] for k, v in result["scales"].items()}
    assert result["chosen"] == max(gaps, key=gaps.get)
    split = load_manifest(config.out / "data" / "manifest.csv", check_files=False)
    n_val_normals = len(split.rows_in("val", "normal"))
    assert result["n"] == {
        "synthetic": (n_val_normals + 1) // 2,
        "real_lesion": len(split.rows_in("val", "lesion")),
        "real_normal": n_val_normals // 2,
    }
    assert (config.out / "guidance.md").read_text().count("(chosen)") == 1
    prepare(config, progress=False)  # now the balance paints with the chosen scale
    assert json.loads((config.out / "balanced" / "balance.json").read_text())["guidance"] == result["chosen"]
    # The synthesizer learnt both classes of the pool's train rows (never val or test).
    card = json.loads((config.out / "synthesizer" / "model_card.json").read_text())
    assert card["regions_per_class"] == {
        "normal": len([r for r in split.rows_in("train", "normal") if r.fields["role"] == "pool"]),
        "lesion": len([r for r in split.rows_in("train", "lesion") if r.fields["role"] == "pool"]),
    }
