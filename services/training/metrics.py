"""Domain metrics of the training-job service: jobs by type and state, durations, queue length.

The job database is the source of truth (jobs run in other processes), so a background thread refreshes
these from it every few seconds rather than counting events.
"""

from __future__ import annotations

import contextlib
import threading

import bentoml

from services.training.jobstore import STATES, JobStore

JOBS = bentoml.metrics.Gauge(
    name="lesionsynth_jobs",
    documentation="Jobs in the database by type and state.",
    labelnames=["type", "state"],
)
QUEUE = bentoml.metrics.Gauge(name="lesionsynth_jobs_queued", documentation="Jobs waiting to run.")
DURATION = bentoml.metrics.Histogram(
    name="lesionsynth_job_duration_seconds",
    documentation="Wall time of finished jobs (start to end of the last attempt), by type and final state.",
    labelnames=["type", "state"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)


class JobMetrics:
    def __init__(self, store: JobStore, job_types, interval_s: float = 5.0):
        self.store, self.job_types, self.interval_s = store, list(job_types), interval_s
        self._seen_finished: set[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-metrics", daemon=True)

    def start(self) -> JobMetrics:
        self.refresh()
        self._thread.start()
        return self

    def refresh(self) -> None:
        counts = self.store.counts()
        for job_type in self.job_types:
            for state in STATES:
                JOBS.labels(type=job_type, state=state).set(counts.get((job_type, state), 0))
        QUEUE.set(sum(n for (_, state), n in counts.items() if state == "queued"))
        finished = [
            j
            for state in ("succeeded", "failed", "cancelled", "interrupted")
            for j in self.store.list(state, limit=1000)
        ]
        if self._seen_finished is None:  # jobs finished before this process started are not observed again
            self._seen_finished = {j.id for j in finished}
            return
        for job in finished:
            if job.id not in self._seen_finished:
                self._seen_finished.add(job.id)
                if job.started_at and job.finished_at:
                    DURATION.labels(type=job.type, state=job.state).observe(job.finished_at - job.started_at)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # metrics must never take the service down
                self.refresh()

    def stop(self) -> None:
        self._stop.set()
