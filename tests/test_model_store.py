"""The versioned model store: atomic publish of only the model's files, versions, "latest", references."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from models.errors import ModelFolderError, ParameterError
from models.store import CARD_KINDS, ModelStore


def fake_model(
    folder: Path, kind: str = "classifier", payload: bytes = b"weights", extra: bool = True
) -> str:
    """A model folder as the writers make it: files, a card listing them, plus training leftovers."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_text('{"arch": "resnet18"}')
    files = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("model.safetensors", "config.json")
    }
    version = files["model.safetensors"][:12]
    card = {"kind": CARD_KINDS[kind], "format_version": 1, "files": files, "model_version": version}
    (folder / "model_card.json").write_text(json.dumps(card))
    if extra:
        (folder / "checkpoints" / "step-000001").mkdir(parents=True)
        (folder / "checkpoints" / "step-000001" / "state.json").write_text("{}")
    return version


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_publish_copies_only_the_model_and_sets_latest(tmp_path):
    version = fake_model(tmp_path / "train")
    store = ModelStore(tmp_path / "store")
    stored = store.publish("classifier", tmp_path / "train")
    assert stored.version == version and stored.path == tmp_path / "store" / "classifier" / version
    assert tree(stored.path) == {"model_card.json", "model.safetensors", "config.json"}  # no checkpoints/
    assert (tmp_path / "store" / "classifier" / "LATEST").read_text().strip() == version
    assert store.latest("classifier") == stored
    assert store.resolve("classifier", "latest") == stored
    assert store.resolve("classifier", version[:6]) == stored
    assert store.resolve("classifier", str(stored.path)).version == version
    assert store.versions("synthesizer") == [] and store.latest("synthesizer") is None
    assert list((tmp_path / "store" / ".staging").iterdir()) == []


def test_same_bytes_are_one_version_and_latest_follows_the_last_publish(tmp_path):
    store = ModelStore(tmp_path / "store")
    v1 = fake_model(tmp_path / "a", payload=b"one")
    v2 = fake_model(tmp_path / "b", payload=b"two")
    first = store.publish("classifier", tmp_path / "a")
    store.publish("classifier", tmp_path / "b")
    assert store.latest("classifier").version == v2
    again = store.publish("classifier", tmp_path / "a")  # retraining gave the same bytes
    assert again == first  # same folder, same publish time
    assert [m.version for m in store.versions("classifier")] == [v1, v2]
    assert store.latest("classifier").version == v1


def test_a_corrupt_folder_is_refused_and_leaves_nothing(tmp_path):
    fake_model(tmp_path / "train")
    (tmp_path / "train" / "config.json").write_text("changed after the card was written")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelFolderError, match="config.json fails its sha256 check"):
        store.publish("classifier", tmp_path / "train")
    assert store.versions("classifier") == []
    assert list((tmp_path / "store" / "classifier").iterdir()) == []
    assert list((tmp_path / "store" / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda card: card.update(kind="lesionsynth.synthesizer"), "not a classifier"),
        (lambda card: card.update(model_version="../../x"), "no valid model_version"),
        (lambda card: card["files"].update({"../outside": "0" * 64}), "invalid file name"),
    ],
)
def test_bad_cards_are_refused(tmp_path, change, message):
    fake_model(tmp_path / "train")
    card = json.loads((tmp_path / "train" / "model_card.json").read_text())
    change(card)
    (tmp_path / "train" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFolderError, match=message):
        ModelStore(tmp_path / "store").publish("classifier", tmp_path / "train")


def test_unknown_kind_and_missing_card(tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ParameterError, match="unknown model kind"):
        store.publish("vae", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no model_card.json"):
        store.publish("classifier", tmp_path / "empty")


def test_stale_staging_is_cleaned_and_a_damaged_version_replaced(tmp_path):
    store = ModelStore(tmp_path / "store")
    version = fake_model(tmp_path / "train")
    stale = tmp_path / "store" / ".staging" / "dead-publish"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    stored = store.publish("classifier", tmp_path / "train")
    assert not stale.exists()
    (stored.path / "model.safetensors").write_bytes(b"bit rot")
    again = store.publish("classifier", tmp_path / "train")
    assert again.version == version and (again.path / "model.safetensors").read_bytes() == b"weights"
    assert list((tmp_path / "store" / ".staging").iterdir()) == []


def test_resolve_errors_list_the_available_versions(tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelFolderError, match="no classifier model has been published"):
        store.resolve("classifier", "latest")
    versions = []
    for i in range(12):
        versions.append(fake_model(tmp_path / f"m{i}", payload=f"w{i}".encode(), extra=False))
        store.publish("classifier", tmp_path / f"m{i}")
    with pytest.raises(ModelFolderError, match=r"newest 10 of 12") as info:
        store.resolve("classifier", "ffffff")
    assert versions[-1] in str(info.value) and versions[0] not in str(info.value)
    with pytest.raises(ModelFolderError, match="not a synthesizer"):
        store.resolve("synthesizer", str(tmp_path / "m0"))


def test_ambiguous_prefix(tmp_path):
    store = ModelStore(tmp_path / "store")
    for name in ("abcdef111111", "abcdef222222"):
        folder = tmp_path / "store" / "classifier" / name
        folder.mkdir(parents=True)
        (folder / "model_card.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="ambiguous"):
        store.resolve("classifier", "abcdef")
    assert store.resolve("classifier", "abcdef1").version == "abcdef111111"


def test_concurrent_publishes_of_one_model(tmp_path):
    version = fake_model(tmp_path / "train", payload=b"x" * 200_000)
    store = ModelStore(tmp_path / "store")
    results, errors = [], []

    def publish():
        try:
            results.append(ModelStore(tmp_path / "store").publish("classifier", tmp_path / "train"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and {r.version for r in results} == {version}
    assert [m.version for m in store.versions("classifier")] == [version]
    assert list((tmp_path / "store" / ".staging").iterdir()) == []


def test_a_real_synthesizer_folder(tmp_path, tiny_synth):
    from models.diffusion.folder import load_synthesizer

    stored = ModelStore(tmp_path / "store").publish("synthesizer", tiny_synth)
    assert (tiny_synth / "checkpoints").is_dir() and not (stored.path / "checkpoints").exists()
    assert load_synthesizer(stored.path, verify=True).model_version == stored.version
