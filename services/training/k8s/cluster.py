"""The few Kubernetes API calls the executor makes, in one namespace (``BatchV1Api`` and ``CoreV1Api``,
or test fakes with the same methods), and the clients from the in-cluster configuration."""

from __future__ import annotations

import logging
from typing import Any

from services.training.k8s.failures import api_error, api_status, pod_index
from services.training.k8s.manifest import CONTAINER, JOB_ID_LABEL, selector

log = logging.getLogger("lesionsynth.training.k8s")


class Cluster:
    def __init__(self, batch_api: Any, core_api: Any, namespace: str):
        self.batch, self.core, self.namespace = batch_api, core_api, namespace

    def create_job(self, manifest: dict[str, Any]) -> None:
        """Create a Job from manifest.job_manifest's dict (API errors propagate)."""
        from kubernetes.client import V1Job

        # Strict: a cluster too old for a field (e.g. backoffLimitPerIndex) refuses the Job instead of
        # silently dropping the field (and with it, say, the "no Kubernetes retries" guarantee).
        self.batch.create_namespaced_job(self.namespace, V1Job.from_dict(manifest), field_validation="Strict")

    def read_job(self, name: str) -> Any:
        return self.batch.read_namespaced_job(name, self.namespace)

    def jobs_of(self, job_id: str) -> list[Any]:
        """Every Kubernetes Job of one training job (all stages and attempts)."""
        return list(
            self.batch.list_namespaced_job(
                self.namespace, label_selector=selector({JOB_ID_LABEL: job_id})
            ).items
        )

    def delete_job(self, name: str, job_id: str) -> None:
        """Delete a Job and (by the garbage collector) its pods; gone already is fine, else a warning."""
        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        except Exception as exc:  # noqa: BLE001  (the caller tries again while it waits for the end)
            if api_status(exc) != 404:
                log.warning("job %s: deleting %s failed: %s", job_id, name, api_error(exc))

    def pods(self, labels: dict[str, str]) -> list[Any]:
        """The pods with these labels, oldest first (then by completion index)."""
        pods = list(self.core.list_namespaced_pod(self.namespace, label_selector=selector(labels)).items)

        def order(pod):
            created = pod.metadata.creation_timestamp
            return (created.timestamp() if created else 0.0, pod_index(pod) or 0, pod.metadata.name)

        return sorted(pods, key=order)

    def pod_log(self, name: str, **kwargs) -> str:
        """The job container's log (``kwargs``: ``limit_bytes`` or ``tail_lines``)."""
        return self.core.read_namespaced_pod_log(
            name, self.namespace, container=CONTAINER, _request_timeout=30, **kwargs
        )


def kubernetes_clients() -> tuple[Any, Any]:
    """``(BatchV1Api, CoreV1Api)`` from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    from models.errors import ConfigError

    try:
        config.load_incluster_config()
    except config.ConfigException as in_cluster:
        try:
            config.load_kube_config()
        except Exception as exc:  # noqa: BLE001  (no cluster to talk to: stop the service with the reason)
            raise ConfigError(
                "LESIONSYNTH_EXECUTOR=kubernetes needs the Kubernetes API: no in-cluster service account "
                f"({in_cluster}) and no usable kubeconfig ({exc})"
            ) from None
    return client.BatchV1Api(), client.CoreV1Api()
