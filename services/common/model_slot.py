"""The model a service serves: resolved from a path, a store version or "latest", swapped on reload.

A service refuses to start when the model is missing or fails its sha256 check (the loader raises
ModelFolderError with the reason; ``bentoml serve`` exits with it). With ``ref="latest"`` and a reload
interval, a background thread loads a newer store version when a training job publishes one, verifies it
and swaps it in between requests; a bad new version is logged and the old one keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from models.store import ModelStore

log = logging.getLogger("lesionsynth.services")
T = TypeVar("T")


def preflight(kind: str, ref: str, store_root: str | Path) -> Path:
    """Resolve ``ref`` and check every file of the model against its card's sha256, or raise
    ModelFolderError saying why.

    Called when a service module is imported, i.e. by ``bentoml serve`` before it starts any worker: a
    missing or corrupted model then stops the command with the reason, instead of BentoML restarting a
    worker that fails in ``__init__`` again and again.
    """
    import json

    from models.model_card import CARD_NAME, verify_files

    stored = ModelStore(store_root).resolve(kind, ref)
    verify_files(stored.path, json.loads((stored.path / CARD_NAME).read_text()))
    return stored.path


class ModelSlot(Generic[T]):
    def __init__(
        self,
        kind: str,
        ref: str,
        store_root: str | Path,
        load: Callable[[Path], T],
        version_of: Callable[[T], str],
        on_swap: Callable[[T], None] = lambda model: None,
    ):
        self.kind, self.ref, self.store = kind, ref, ModelStore(store_root)
        self._load, self._version_of, self._on_swap = load, version_of, on_swap
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.model: T = self._load(self.resolve())
        self._on_swap(self.model)

    def resolve(self) -> Path:
        return self.store.resolve(self.kind, self.ref).path

    @property
    def version(self) -> str:
        return self._version_of(self.model)

    def reload(self) -> tuple[str, str]:
        """Load what ``ref`` names now, if it is a different version; return (old, new) versions."""
        with self._lock:
            old = self.version
            candidate = self.resolve()
            new_model = self._load(candidate)
            if self._version_of(new_model) != old:
                self.model = new_model
                self._on_swap(new_model)
                log.info("%s: now serving %s (was %s)", self.kind, self.version, old)
            return old, self.version

    def watch(self, interval_s: float) -> None:
        """Poll for a newer version every ``interval_s`` seconds (only meaningful for ``ref="latest"``)."""
        if interval_s <= 0 or self.ref != "latest":
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    latest = self.store.latest(self.kind)
                    if latest is not None and latest.version != self.version:
                        self.reload()
                except Exception:  # keep serving the current model; say why the new one was refused
                    log.exception("%s: reload failed; still serving %s", self.kind, self.version)

        self._thread = threading.Thread(target=loop, name=f"{self.kind}-reload", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
