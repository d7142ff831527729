"""Reading the cluster's objects: a Job's phase, why a Job or its pods failed, why a pod waits.

Pure functions over ``kubernetes.client`` models (or anything with the same attributes); the failure
texts are what a job's record shows, one line each, with the exit status in the scheduler's convention
(< 0: minus the signal that killed it).
"""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any

from services.training.executor import exit_reason
from services.training.jobstore import one_line
from services.training.k8s.manifest import CONTAINER, INDEX_KEY

#: Container waiting reasons that a person must fix (shown in the job's stage while the pod waits).
STUCK_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


def parse_indexes(text: str | None) -> list[int]:
    """Kubernetes' compressed index list ("1,3-5") as [1, 3, 4, 5]."""
    out: list[int] = []
    for part in filter(None, (text or "").split(",")):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def job_phase(k8s_job: Any) -> tuple[str, Any]:
    """("succeeded" | "failed" | "active", the deciding condition or None).

    Only the terminal conditions count (Complete, Failed): since Kubernetes 1.31 they are set once the
    Job's pods have terminated, so no pod of a finished stage still writes to the shared volume.
    """
    for condition in (k8s_job.status.conditions if k8s_job.status else None) or []:
        if condition.status == "True" and condition.type == "Complete":
            return "succeeded", condition
        if condition.status == "True" and condition.type == "Failed":
            return "failed", condition
    return "active", None


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def api_status(exc: BaseException) -> int | None:
    """The HTTP status of an API error (404, 409, ...), None for any other exception."""
    return getattr(exc, "status", None) if isinstance(exc, _api_exception()) else None


def api_error(exc: BaseException) -> str:
    """One line for an API error: status, reason and the server's message (not the headers)."""
    if not isinstance(exc, _api_exception()):
        return f"{type(exc).__name__}: {exc}"
    message = ""
    with contextlib.suppress(TypeError, ValueError):
        message = json.loads(exc.body or "{}").get("message", "")
    return one_line(f"{exc.status} {exc.reason}" + (f": {message}" if message else ""))


def pod_index(pod: Any) -> int | None:
    """The completion index of a pod of an Indexed Job (label, else annotation); None otherwise."""
    meta = pod.metadata
    raw = (meta.labels or {}).get(INDEX_KEY) or (meta.annotations or {}).get(INDEX_KEY)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def pod_failure(pod: Any, memory: str) -> tuple[str, int] | None:
    """(one line, exit status in the scheduler's convention) for a failed pod, or None.

    ``memory``: the pod's memory limit, named in an out-of-memory failure."""
    for cs in pod.status.container_statuses or []:
        terminated = cs.state.terminated if cs.state else None
        if cs.name != CONTAINER or terminated is None:
            continue
        if terminated.reason == "OOMKilled":
            return (
                f"out of memory: the container was OOMKilled (memory limit {memory}, LESIONSYNTH_K8S_MEMORY)",
                -signal.SIGKILL,
            )
        code = terminated.exit_code or 1
        if code > 128 and terminated.signal is None:
            code = -(code - 128)  # 137: killed by SIGKILL, in the scheduler's convention
        lines = [line.strip() for line in (terminated.message or "").splitlines() if line.strip()]
        # Our stage writes one line; a crash leaves the log's tail (FallbackToLogsOnError): its last line.
        return (lines[-1] if lines else exit_reason(code)), code
    if pod.status.reason:
        return one_line(f"{pod.status.reason}: {pod.status.message or ''}"), 1
    return None


def stage_failure(
    *,
    name: str,
    stage: str,
    units: tuple[str, ...],
    k8s_job: Any,
    condition: Any,
    pods: list[Any],
    memory: str,
    deadline_seconds: int,
) -> tuple[str, int]:
    """(the job's error, exit status) for a failed Job ``name`` of ``stage``, from its condition, its
    failed indexes (the units Job: each failed unit named) and its failed ``pods``."""
    reason = getattr(condition, "reason", None) or ""
    failures = [
        (p, *f) for p in pods if p.status and p.status.phase == "Failed" and (f := pod_failure(p, memory))
    ]
    code = failures[0][2] if failures else 1
    if reason == "DeadlineExceeded":
        text = (
            f"the Kubernetes Job {name} ran longer than its deadline "
            f"({deadline_seconds} s, LESIONSYNTH_K8S_DEADLINE_S) and was stopped"
        )
        return text, -signal.SIGKILL if code == 1 else code
    if stage == "units" and units:
        failed = parse_indexes(k8s_job.status.failed_indexes) or sorted(
            i for p, *_ in failures if (i := pod_index(p)) is not None
        )
        by_index = {pod_index(p): text for p, text, _ in failures}
        named = [
            f"{units[i] if i < len(units) else f'index {i}'}: {by_index.get(i, 'failed')}" for i in failed
        ]
        if not named:
            return f"the experiment's units Job {name} failed ({reason or 'no reason given'})", code
        return f"{len(failed)} of {len(units)} experiment units failed: " + "; ".join(named), code
    if failures:
        text = failures[0][1]
        return (text if stage == "job" else f"experiment stage {stage}: {text}"), code
    message = getattr(condition, "message", None)
    detail = f"{reason or 'no reason given'}{': ' + message if message else ''}"
    return f"the Kubernetes Job {name} failed ({detail})", code


def waiting_reason(pods: list[Any]) -> str | None:
    """Why a pod is not running yet: unschedulable (no free GPU?), image pull errors; None if neither."""
    for pod in pods:
        for condition in (pod.status.conditions or []) if pod.status else []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return one_line(f"waiting for a node: {condition.reason}: {condition.message or ''}")[:160]
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason in STUCK_REASONS:
                return one_line(f"{waiting.reason}: {waiting.message or ''}")[:160]
    return None
