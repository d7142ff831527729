"""Progress that a job can observe: tqdm bars that also report to a process-wide sink.

The training recipes, balancing and the experiment report progress with tqdm bars. A training job runs
them in a worker process whose stderr is a log file, not a terminal; what the service needs is the stage
and the fraction done, in its job database. So the recipes import :class:`tqdm` from here: it draws the
usual bar and also calls the sink set with :func:`set_sink` with ``(desc, n, total)``.

- The sink is called even when the bar is disabled (``disable=True`` / ``progress=False``): ``disable``
  only turns the drawing off, so a job can run the recipes quietly and still report progress.
- Calls are throttled process-wide to at most one per :data:`MIN_INTERVAL` seconds (a bar updated every
  training step would otherwise write to the database hundreds of times a second), except the last
  update of each bar, which is always delivered when the bar closes.
- A sink that raises never stops the computation: the error is logged and the bar goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tqdm import tqdm as _tqdm

log = logging.getLogger(__name__)

Sink = Callable[[str, float, float | None], None]
MIN_INTERVAL = 0.5

_lock = threading.Lock()
_sink: Sink | None = None
_last_call = 0.0


def set_sink(sink: Sink | None) -> Sink | None:
    """Send every bar's ``(desc, n, total)`` to ``sink`` (None: to nowhere); return the previous sink."""
    global _sink, _last_call
    with _lock:
        previous, _sink, _last_call = _sink, sink, 0.0
    return previous


def _deliver(desc: str, n: float, total: float | None, final: bool) -> None:
    global _last_call
    with _lock:
        if _sink is None:
            return
        now = time.monotonic()
        if not final and now - _last_call < MIN_INTERVAL:
            return
        _last_call = now
        try:
            _sink(desc, n, total)
        except Exception as exc:  # noqa: BLE001  (progress must never break the work it reports on)
            log.warning("progress sink failed: %s: %s", type(exc).__name__, exc)


class tqdm(_tqdm):  # noqa: N801  (a drop-in for tqdm.tqdm)
    """``tqdm.tqdm`` with the same constructor, forwarding its progress to the sink."""

    def __init__(self, *args, **kwargs):
        self._sink_closed = False  # before tqdm's __init__: its __del__ may run close() if __init__ fails
        desc = kwargs.get("desc", args[1] if len(args) > 1 else None)
        self._sink_desc = desc or ""
        super().__init__(*args, **kwargs)
        self._forward()

    def _forward(self, final: bool = False) -> None:
        _deliver(self._sink_desc, self.n, self.total, final)

    def set_description(self, desc=None, refresh=True):
        self._sink_desc = desc or ""
        return super().set_description(desc, refresh)

    def set_description_str(self, desc=None, refresh=True):
        self._sink_desc = desc or ""
        return super().set_description_str(desc, refresh)

    def update(self, n=1):
        if self.disable and not self._sink_closed:
            # tqdm does no counting when disabled; the sink still wants the count.
            self.n += n
            self._forward()
            return None
        shown = super().update(n)
        self._forward()
        return shown

    def __iter__(self):
        if not self.disable:
            # tqdm's own loop calls self.update() at its refresh interval and self.close() at the end.
            yield from super().__iter__()
            return
        try:
            for obj in self.iterable:
                yield obj
                self.n += 1
                self._forward()
        finally:
            self.close()

    def close(self):
        if not self._sink_closed:
            self._sink_closed = True
            self._forward(final=True)
        super().close()


class JsonFileSink:
    """A sink that keeps the current bar in a JSON file ``{"desc", "n", "total"}`` (written atomically).

    For work in another process that cannot reach the job record: a torchrun rank writes it, the job
    process reads it with :func:`read_progress_file` and re-reports it on its own bar (models/torchrun.py).
    """

    def __init__(self, path):
        self.path = path

    def __call__(self, desc: str, n: float, total: float | None) -> None:
        from models.artifacts import atomic_write_json

        atomic_write_json(self.path, {"desc": desc, "n": n, "total": total})


def read_progress_file(path) -> tuple[str, float, float | None] | None:
    """``(desc, n, total)`` from a :class:`JsonFileSink` file; None when absent or unreadable."""
    import json

    try:
        value = json.loads(open(path, encoding="utf-8").read())  # noqa: SIM115, PTH123
        return (
            str(value["desc"]),
            float(value["n"]),
            None if value["total"] is None else float(value["total"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
