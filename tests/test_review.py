"""The review column (models/review.py) and its use: train-classifier leaves rejected synthetic rows out,
and unreviewed ones too with require_review; the experiment's classifier section takes the flag."""

from __future__ import annotations

import csv
import shutil
import threading
from pathlib import Path

import pytest

from models import review
from models.errors import ConfigError, NotFoundError, ParameterError


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in columns})


@pytest.fixture()
def balanced(tmp_path, demo_manifest) -> Path:
    """A balanced-like folder: the demo rows + 4 synthetic rows (copies of train lesion images)."""
    folder = tmp_path / "balanced"
    shutil.copytree(demo_manifest.parent, folder)
    rows = _rows(folder / "manifest.csv")
    for r in rows:
        r["synthetic"] = "0"
    lesions = [r for r in rows if r["label"] == "lesion" and r["split"] == "train"]
    normals = [r for r in rows if r["label"] == "normal" and r["split"] == "train"]
    (folder / "synthetic").mkdir()
    for i in range(4):
        name = f"synthetic/syn_{i:05d}.png"
        shutil.copy(folder / lesions[i]["image_path"], folder / name)
        rows.append(
            {
                "image_path": name,
                "mask_path": normals[i]["mask_path"],
                "label": "lesion",
                "split": "train",
                "synthetic": "1",
                "source_image": normals[i]["image_path"],
                "seed": str(i),
                "model_version": "abc123",
            }
        )
    _write(folder / "manifest.csv", rows)
    return folder


def test_keeps_row_rules():
    real = {"synthetic": "0", "review": "rejected"}  # a decision on a real row means nothing
    assert review.keeps_row(real) and review.keeps_row(real, require_review=True)
    for decision, default, required in (
        ("", True, False),
        ("accepted", True, True),
        ("rejected", False, False),
    ):
        fields = {"synthetic": "1", "review": decision}
        assert review.keeps_row(fields) is default
        assert review.keeps_row(fields, require_review=True) is required
    assert review.keeps_row({"synthetic": "1"})  # no review column: unreviewed
    assert not review.keeps_row({"synthetic": "1", "review": " Rejected "})


def test_set_review_writes_the_column_and_keeps_every_other_cell(balanced):
    before = _rows(balanced / "manifest.csv")
    items = review.review_items(balanced)
    assert [i["image_path"] for i in items] == [f"synthetic/syn_{i:05d}.png" for i in range(4)]
    assert {i["decision"] for i in items} == {""}

    assert review.set_review(balanced, items[0]["image_path"], "accepted")["decision"] == "accepted"
    review.set_review(balanced / "manifest.csv", items[1]["image_path"], "rejected")
    after = _rows(balanced / "manifest.csv")
    assert [r["review"] for r in after[-4:]] == ["accepted", "rejected", "", ""]
    assert all(r["review"] == "" for r in after[:-4])  # real rows: never a decision
    for b, a in zip(before, after, strict=True):
        assert {k: v for k, v in a.items() if k != "review"} == b
    assert review.summary(review.review_items(balanced)) == {
        "total": 4,
        "accepted": 1,
        "rejected": 1,
        "unreviewed": 2,
    }
    review.set_review(balanced, items[0]["image_path"], "")  # undo
    assert _rows(balanced / "manifest.csv")[-4]["review"] == ""


def test_set_review_refuses_bad_input(balanced):
    with pytest.raises(ParameterError, match="decision"):
        review.set_review(balanced, "synthetic/syn_00000.png", "maybe")
    real = _rows(balanced / "manifest.csv")[0]["image_path"]
    with pytest.raises(NotFoundError):
        review.set_review(balanced, real, "accepted")  # only synthetic rows are reviewed
    with pytest.raises(NotFoundError):
        review.review_items(balanced / "nowhere")


def test_concurrent_decisions_are_all_kept(balanced):
    names = [i["image_path"] for i in review.review_items(balanced)]
    threads = [
        threading.Thread(target=review.set_review, args=(balanced, n, "accepted" if k % 2 else "rejected"))
        for k, n in enumerate(names)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["review"] for r in _rows(balanced / "manifest.csv")[-4:]] == [
        "rejected",
        "accepted",
        "rejected",
        "accepted",
    ]


def test_listed_file_serves_only_what_synthetic_rows_list(balanced):
    item = review.review_items(balanced)[0]
    for name in (item["image_path"], item["source_image"], item["mask_path"]):
        assert review.listed_file(balanced, name).is_file()
    real_lesion = next(r for r in _rows(balanced / "manifest.csv") if r["label"] == "lesion")["image_path"]
    for name in ("manifest.csv", "../../etc/passwd", "/etc/passwd", real_lesion):
        with pytest.raises(NotFoundError):
            review.listed_file(balanced, name)


def test_carry_over_keeps_decisions_when_balance_rewrites(balanced):
    review.set_review(balanced, "synthetic/syn_00002.png", "rejected")
    rewritten = (balanced / "manifest.csv").read_text().replace(",rejected", ",")
    assert "rejected" not in rewritten
    text = review.carry_over(balanced / "manifest.csv", rewritten)
    assert text.count("rejected") == 1 and "syn_00002.png" in text.splitlines()[-2]


def _train(balanced: Path, out: Path, **overrides) -> dict:
    from models.classifier.train import ClassifierTrainSettings, train_classifier

    values = dict(
        manifest=balanced / "manifest.csv",
        positive_label="lesion",
        out=out,
        arch="resnet18",
        image_size=32,
        epochs=1,
        batch_size=64,  # one batch per epoch: never a last batch of 1 (BatchNorm refuses it)
        balance="synthetic",
        progress=False,
        device="cpu",
    )
    values.update(overrides)
    return train_classifier(ClassifierTrainSettings(**values))


def test_train_classifier_leaves_rejected_and_with_require_review_unreviewed_out(balanced, tmp_path):
    names = [i["image_path"] for i in review.review_items(balanced)]
    review.set_review(balanced, names[0], "accepted")
    review.set_review(balanced, names[1], "rejected")
    card = _train(balanced, tmp_path / "default")
    assert card["train"]["n_synthetic"] == 3  # accepted + 2 unreviewed
    assert card["train"]["n_review_dropped"] == 1
    card = _train(balanced, tmp_path / "required", require_review=True)
    assert card["train"]["n_synthetic"] == 1  # only the accepted one
    assert card["train"]["n_review_dropped"] == 3
    # a strategy without synthetic rows is untouched by review
    assert _train(balanced, tmp_path / "none", balance="none")["train"]["n_review_dropped"] == 0

    for n in names:
        review.set_review(balanced, n, "rejected")
    with pytest.raises(ConfigError, match="review left none"):
        _train(balanced, tmp_path / "all-rejected")


def test_experiment_config_takes_require_review(tmp_path, demo_manifest):
    from conftest import experiment_yaml

    from models.experiment.config import CLASSIFIER_KEYS, load_config

    assert "require_review" in CLASSIFIER_KEYS
    config = load_config(experiment_yaml(tmp_path, demo_manifest, classifier={"require_review": True}))
    assert config.classifier["require_review"] is True


def test_set_review_in_a_missing_folder_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        review.set_review(tmp_path / "absent" / "balanced", "synthetic/syn_00000.png", "accepted")


def test_rerunning_balance_keeps_the_review(tmp_path, demo_manifest, tiny_synth):
    from models.balance import BalanceSettings, balance_dataset

    settings = BalanceSettings(
        manifest=demo_manifest,
        model=tiny_synth,
        normal_label="normal",
        lesion_label="lesion",
        count=2,
        out=tmp_path / "balanced",
        steps=2,
        progress=False,
    )
    balance_dataset(settings)
    names = [i["image_path"] for i in review.review_items(settings.out)]
    review.set_review(settings.out, names[1], "rejected")
    balance_dataset(settings)  # a rerun (resume) rewrites manifest.csv
    assert [i["decision"] for i in review.review_items(settings.out)] == ["", "rejected"]
