"""A Kubernetes job's log: the executor's notes and its pods' logs, kept in the job's log file.

Pods go with their Job when its TTL ends, so when a stage ends its pods' logs are appended to
``<jobs_dir>/<id>/log.txt`` (the local executor's file, with the same note lines) and the Job's name to
``k8s-archived-jobs.txt``; reading the log adds the live logs of the pods not archived yet.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from services.training.executor import LOG_NAME, note_line, read_tail
from services.training.k8s.cluster import Cluster
from services.training.k8s.failures import api_error, pod_index
from services.training.k8s.manifest import ATTEMPT_LABEL, JOB_ID_LABEL, STAGE_LABEL, job_name

log = logging.getLogger("lesionsynth.training.k8s")

ARCHIVED_NAME = "k8s-archived-jobs.txt"
#: Pod logs kept in the job's log file when a Job ends (its pods go with the Job after the TTL).
ARCHIVE_BYTES_PER_POD = 4 * 1024 * 1024


class JobLogs:
    """The log files of the jobs under ``jobs_dir``, and their pods' logs from the cluster."""

    def __init__(self, jobs_dir: Path, cluster: Cluster):
        self.jobs_dir, self.cluster = Path(jobs_dir), cluster
        self._lock = threading.Lock()

    def path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / LOG_NAME

    def note(self, job_id: str, text: str) -> None:
        """A line from the executor in the job's log file (as the local executor writes one)."""
        log.info("job %s: %s", job_id, text)
        self.append(job_id, note_line(text))

    def append(self, job_id: str, text: str) -> None:
        path = self.path(job_id)
        with self._lock, contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)

    def archived(self, job_id: str) -> set[str]:
        """Names of the Jobs whose pods' logs are in the file already."""
        try:
            return set((self.jobs_dir / job_id / ARCHIVED_NAME).read_text().split())
        except OSError:
            return set()

    def pod_log(self, pod: Any, **kwargs) -> str:
        """One pod's log under a header line (``kwargs``: ``limit_bytes`` or ``tail_lines``)."""
        index = pod_index(pod)
        header = (
            f"=== pod {pod.metadata.name}" + (f" (index {index})" if index is not None else "") + " ===\n"
        )
        try:
            text = self.cluster.pod_log(pod.metadata.name, **kwargs)
        except Exception as exc:  # noqa: BLE001  (a pod still being created has no log yet)
            text = f"(no log: {api_error(exc)})"
        text = text or ""
        return header + text + ("" if text.endswith("\n") or not text else "\n")

    def archive(self, job_id: str, k8s_job_name: str, pods: list[Any]) -> None:
        """Copy the finished Job's pod logs into the job's log file and mark the Job archived."""
        self.append(job_id, "".join(self.pod_log(p, limit_bytes=ARCHIVE_BYTES_PER_POD) for p in pods))
        archived = self.jobs_dir / job_id / ARCHIVED_NAME
        with self._lock, contextlib.suppress(OSError), open(archived, "a", encoding="utf-8") as fh:
            fh.write(k8s_job_name + "\n")

    def read(self, job_id: str, tail_bytes: int) -> str:
        """The job's log file (executor notes + archived pod logs), then the live logs of its pods."""
        tail_bytes = max(0, tail_bytes)
        parts = [read_tail(self.path(job_id), tail_bytes)]
        archived = self.archived(job_id)
        try:
            pods = self.cluster.pods({JOB_ID_LABEL: job_id})
        except Exception as exc:  # noqa: BLE001  (the file's part is still worth returning)
            pods = []
            parts.append(f"=== live pod logs unavailable: {api_error(exc)} ===\n")
        for pod in pods:
            name = job_name(
                job_id,
                pod.metadata.labels.get(STAGE_LABEL, "job"),
                int(pod.metadata.labels.get(ATTEMPT_LABEL, "1")),
            )
            if name in archived:
                continue
            parts.append(self.pod_log(pod, tail_lines=min(10_000, max(100, tail_bytes // 40))))
        data = "".join(parts).encode()
        return data[len(data) - tail_bytes :].decode("utf-8", errors="replace") if tail_bytes else ""
