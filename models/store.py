"""The versioned model store: where jobs publish models and the services load them from.

    <root>/
      synthesizer/
        09e2c279ee62/            one folder per model version: model_card.json + the files it lists
        LATEST                   text: the version "latest" means
      classifier/ ...
      classifier-onnx/ ...
      .staging/                  half-copied publishes; never read, cleaned by a later publish
      .publish.lock              flock: shared while publishing, exclusive while cleaning .staging

Why a store and not just folders: a training folder also holds checkpoints and is rewritten while the job
runs, so a service pointed at it could load a model mid-write. :meth:`ModelStore.publish` copies only the
model (the card and the files the card lists) into a staging folder, checks every sha256 there, fsyncs,
and renames it into place in one step, so ``<root>/<kind>/<version>/`` is either absent or complete. The
version is the card's ``model_version`` (a prefix of the weights' sha256): training is deterministic, so
the same bytes published twice are one version.

A version is never rewritten, with one exception: a ``classifier-onnx`` version is model.onnx's (the FP32
weights), and the INT8 graph (``export-serving --int8``: model.int8.onnx, its Triton model and the card's
``int8`` entry) is a derived artifact of that same version. Publishing a folder with the INT8 graph over a
stored version that lacks it adds it (:meth:`ModelStore._add_int8`): the new files are staged and verified,
renamed in, and the card (which lists them) is replaced last by a rename, so a crash leaves the version
without INT8 or with all of it. Added once, never replaced: a stored version that already has a different
INT8 graph is refused.

The store checks integrity when it publishes; loading verifies again (the loaders check every sha256), so
:meth:`ModelStore.resolve` only finds folders and stays cheap enough to call on every reload.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from models.artifacts import STORAGE_ERRNOS, atomic_write_text, sha256_file, storage_error
from models.errors import ModelFolderError, ParameterError
from models.model_card import CARD_NAME

KINDS = ("synthesizer", "classifier", "classifier-onnx")
#: The model card ``kind`` each store kind holds (see models/diffusion/folder.py, models/classifier/folder.py
#: and models/export/serving.py, which write them).
CARD_KINDS = {
    "synthesizer": "lesionsynth.synthesizer",
    "classifier": "lesionsynth.classifier",
    "classifier-onnx": "lesionsynth.classifier.onnx",
}
LATEST = "LATEST"
STAGING = ".staging"
LOCK = ".publish.lock"
#: flock held exclusively while an INT8 graph is added to a stored version (rare; one at a time).
INT8_LOCK = ".int8.lock"
#: A version is a lowercase hex digest prefix; a reference needs at least 6 digits to be unambiguous enough.
_VERSION = re.compile(r"^[0-9a-f]{6,64}$")
_SHOWN_VERSIONS = 10


@dataclass(frozen=True)
class StoredModel:
    kind: str
    version: str
    path: Path
    published_at: float


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ParameterError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")


def _read_card(folder: Path, kind: str) -> dict:
    """The card of ``folder`` if it is a model of ``kind`` with a usable version and file list."""
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: it has no {CARD_NAME}")
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{CARD_NAME} in {folder} is not valid JSON") from exc
    if not isinstance(card, dict) or card.get("kind") != CARD_KINDS[kind]:
        found = card.get("kind") if isinstance(card, dict) else None
        raise ModelFolderError(
            f"{folder} holds a model of kind {found!r}, not a {kind} ({CARD_KINDS[kind]!r})"
        )
    version = card.get("model_version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ModelFolderError(f"{folder}: {CARD_NAME} has no valid model_version (hex digits)")
    files = card.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelFolderError(f"{folder}: {CARD_NAME} lists no files")
    for name, digest in files.items():
        parts = PurePosixPath(name).parts
        # A card names files inside its folder; anything else would let a card copy arbitrary files.
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or name == CARD_NAME:
            raise ModelFolderError(f"{folder}: {CARD_NAME} lists an invalid file name {name!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ModelFolderError(f"{folder}: {CARD_NAME} has no valid sha256 for {name}")
    return card


def _verify(folder: Path, card: dict) -> str | None:
    """None when every listed file has its sha256; else what is wrong."""
    for name, expected in card["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != expected:
            return f"{name} fails its sha256 check"
    return None


def _int8_files(folder: Path, card: dict) -> list[str]:
    """The files of a classifier-onnx card's INT8 graph: the graph and its Triton model's folder."""
    entry = card["int8"]
    graph, triton = entry.get("file"), entry.get("triton_model_name")
    names = [n for n in card["files"] if n == graph or (triton and n.startswith(f"triton/{triton}/"))]
    if graph not in card["files"] or entry.get("sha256") != card["files"][graph]:
        raise ModelFolderError(f"{folder}: {CARD_NAME}'s int8 entry does not match its file list")
    if any(len(PurePosixPath(n).parts) != 1 and not n.startswith("triton/") for n in names):
        raise ModelFolderError(f"{folder}: {CARD_NAME} lists an INT8 file outside triton/")
    return sorted(names)


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entries are durable only once the folder itself is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """Published models by kind and version. Safe for several processes publishing at once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- publishing -------------------------------------------------------------------------------

    def publish(self, kind: str, folder: str | Path) -> StoredModel:
        """Copy the model in ``folder`` into the store atomically and make it the kind's latest."""
        _check_kind(kind)
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"cannot publish {folder}: it is not a folder")
        card = _read_card(folder, kind)
        version = card["model_version"]
        kind_dir = self.root / kind
        target = kind_dir / version
        staging_root = self.root / STAGING
        staging_root.mkdir(parents=True, exist_ok=True)
        kind_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Publishes hold the lock shared; whoever gets it exclusively knows no publish is under way
            # (in any process) and removes what dead publishes left in .staging.
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                for entry in staging_root.iterdir():
                    shutil.rmtree(entry, ignore_errors=True)
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            self._publish_locked(kind, folder, card, target)
            self._set_latest(kind, version)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise storage_error(exc, f"{kind} {version} into the model store {self.root}") from exc
            raise
        finally:
            os.close(lock_fd)
        return self._stored(kind, target)

    def _publish_locked(self, kind: str, folder: Path, card: dict, target: Path) -> None:
        if target.is_dir() and self._intact(target, kind):
            # The same bytes were published before: one version (plus an INT8 graph it may lack).
            self._add_int8(kind, folder, card, target)
            return
        staging_root = self.root / STAGING
        staging = staging_root / uuid.uuid4().hex
        try:
            self._stage(folder, card, staging)
            os.utime(staging / CARD_NAME)  # its mtime is the publish time
            _fsync(staging)
            if target.is_dir() and not self._intact(target, kind):
                # A damaged copy of this version (disk error, tampering): move it aside, then replace it.
                damaged = staging_root / f"damaged-{uuid.uuid4().hex}"
                os.rename(target, damaged)
                shutil.rmtree(damaged, ignore_errors=True)
            try:
                os.rename(staging, target)
            except OSError:
                # Another process published the same version first; theirs is as good as ours.
                if not (target.is_dir() and self._intact(target, kind)):
                    raise
                self._add_int8(kind, folder, card, target)
            _fsync(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, folder: Path, card: dict, staging: Path) -> None:
        """Copy the files ``card`` lists from ``folder`` into a new ``staging`` folder and check their
        sha256 there (what a publish renames into the store is what was verified)."""
        staging.mkdir()
        self._copy_model(folder, card, staging)
        problem = _verify(staging, card)
        if problem:
            raise ModelFolderError(
                f"cannot publish {folder}: {problem} (the folder is corrupted or still being written)"
            )

    def _add_int8(self, kind: str, folder: Path, card: dict, target: Path) -> None:
        """Add ``folder``'s INT8 graph to the stored version ``target`` if it lacks one (see the docstring).

        Nothing to do when ``card`` has no ``int8`` entry or the stored one is the same graph; a different
        stored INT8 graph is refused (ModelFolderError). Atomic: files staged + verified, renamed into the
        version (unlisted until the card names them), then the card replaced by a rename.
        """
        entry = card.get("int8")
        if kind != "classifier-onnx" or not isinstance(entry, dict):
            return
        lock_fd = os.open(self.root / INT8_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            stored = _read_card(target, kind)  # read under the lock: another publish may have added it
            names = _int8_files(folder, card)
            theirs = stored.get("int8")
            version = stored["model_version"]
            if isinstance(theirs, dict):
                if theirs.get("sha256") == entry.get("sha256"):
                    return
                raise ModelFolderError(
                    f"cannot publish {folder}: classifier-onnx {version} in the model store {self.root} "
                    f"already has a different INT8 graph (sha256 {str(theirs.get('sha256'))[:12]}, this one "
                    f"{str(entry.get('sha256'))[:12]}); an INT8 graph is added to a version once and never "
                    "replaced: serve the stored one, or publish under a new version"
                )
            fp32 = stored["files"].get("model.onnx")
            if fp32 is None or card["files"].get("model.onnx") != fp32 or entry.get("fp32_sha256") != fp32:
                raise ModelFolderError(
                    f"cannot publish {folder}: its INT8 graph was not quantised from classifier-onnx "
                    f"{version}'s model.onnx"
                )
            clash = sorted(n for n in names if n in stored["files"])
            if clash:
                raise ModelFolderError(
                    f"cannot publish {folder}: classifier-onnx {version} already lists {', '.join(clash)}"
                )
            added = {"files": {n: card["files"][n] for n in names}}
            staging = self.root / STAGING / uuid.uuid4().hex
            try:
                self._stage(folder, added, staging)
                new_card = {**stored, "int8": entry, "files": {**stored["files"], **added["files"]}}
                staged_card = staging / f"{CARD_NAME}.new"
                staged_card.write_text(json.dumps(new_card, indent=2, sort_keys=True) + "\n")
                old = (target / CARD_NAME).stat()
                os.utime(staged_card, ns=(old.st_atime_ns, old.st_mtime_ns))  # the version's publish time
                _fsync(staged_card)
                _fsync(staging)
                # Top-level entries (model.int8.onnx, triton/<name>_int8/): unlisted by the stored card until
                # it is replaced, so a crash here leaves the version as it was (plus unread leftovers, which
                # the next try replaces).
                for top in sorted({PurePosixPath(n).parts[0] for n in names} - {"triton"}):
                    os.replace(staging / top, target / top)
                for sub in sorted(
                    {"/".join(PurePosixPath(n).parts[:2]) for n in names if n.startswith("triton/")}
                ):
                    dest = target / sub
                    dest.parent.mkdir(exist_ok=True)
                    if dest.exists():
                        shutil.rmtree(dest)
                    os.rename(staging / sub, dest)
                    _fsync(dest.parent)
                _fsync(target)
                os.rename(staged_card, target / CARD_NAME)  # the commit: the card now lists the INT8 files
                _fsync(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(lock_fd)

    def _copy_model(self, folder: Path, card: dict, staging: Path) -> None:
        """Copy the card and the files it lists (not checkpoints/, snapshots/ or anything else)."""
        copied: dict[str, Path] = {}
        for name, digest in card["files"].items():
            source, dest = folder / name, staging / name
            if not source.is_file():
                raise ModelFolderError(f"cannot publish {folder}: {name} is missing")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if digest in copied:  # e.g. the ONNX graph and its Triton copy: one inode, no second copy
                with contextlib.suppress(OSError):
                    os.link(copied[digest], dest)
            if not dest.exists():
                shutil.copyfile(source, dest)
                _fsync(dest)
            copied.setdefault(digest, dest)
        shutil.copyfile(folder / CARD_NAME, staging / CARD_NAME)
        _fsync(staging / CARD_NAME)
        for sub in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
            _fsync(sub)

    def _intact(self, target: Path, kind: str) -> bool:
        try:
            return _verify(target, _read_card(target, kind)) is None
        except ModelFolderError:
            return False

    def _set_latest(self, kind: str, version: str) -> None:
        atomic_write_text(self.root / kind / LATEST, version + "\n")

    # -- finding ----------------------------------------------------------------------------------

    def _stored(self, kind: str, folder: Path) -> StoredModel:
        return StoredModel(
            kind=kind, version=folder.name, path=folder, published_at=(folder / CARD_NAME).stat().st_mtime
        )

    def versions(self, kind: str) -> list[StoredModel]:
        """Every published version of ``kind``, oldest first."""
        _check_kind(kind)
        kind_dir = self.root / kind
        if not kind_dir.is_dir():
            return []
        found = []
        for entry in kind_dir.iterdir():
            if entry.is_dir() and _VERSION.match(entry.name) and (entry / CARD_NAME).is_file():
                with contextlib.suppress(OSError):
                    found.append(self._stored(kind, entry))
        return sorted(found, key=lambda m: (m.published_at, m.version))

    def latest(self, kind: str) -> StoredModel | None:
        """The version LATEST names; the newest published one if LATEST is missing or stale."""
        _check_kind(kind)
        with contextlib.suppress(OSError):
            version = (self.root / kind / LATEST).read_text().strip()
            folder = self.root / kind / version
            if _VERSION.match(version) and (folder / CARD_NAME).is_file():
                return self._stored(kind, folder)
        found = self.versions(kind)
        return found[-1] if found else None

    def resolve(self, kind: str, ref: str) -> StoredModel:
        """``ref`` is "latest", a version (or a unique prefix of >= 6 hex digits), or a model folder path."""
        _check_kind(kind)
        if not isinstance(ref, str) or not ref.strip():
            raise ParameterError("a model reference must be 'latest', a version or a folder path")
        ref = ref.strip()
        if ref == "latest":
            found = self.latest(kind)
            if found is None:
                raise ModelFolderError(
                    f"no {kind} model has been published to the model store {self.root} yet"
                )
            return found
        if _VERSION.match(ref):
            matches = [m for m in self.versions(kind) if m.version.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(m.version for m in matches[:_SHOWN_VERSIONS])
                raise ModelFolderError(
                    f"{kind} version {ref!r} is ambiguous: it matches {names}; give more digits"
                )
        folder = Path(ref).expanduser()
        if folder.is_dir():
            folder = folder.resolve()
            card = _read_card(folder, kind)
            return StoredModel(
                kind=kind,
                version=card["model_version"],
                path=folder,
                published_at=(folder / CARD_NAME).stat().st_mtime,
            )
        raise ModelFolderError(
            f"no {kind} model matches {ref!r} (not 'latest', a published version or a model folder); "
            + self._available(kind)
        )

    def _available(self, kind: str) -> str:
        found = self.versions(kind)
        if not found:
            return f"the model store {self.root} holds no {kind} versions"
        shown = [m.version for m in found[-_SHOWN_VERSIONS:]]
        more = f" (newest {len(shown)} of {len(found)})" if len(found) > len(shown) else ""
        return f"available versions{more}, oldest first: {', '.join(shown)}"
