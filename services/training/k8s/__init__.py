"""The Kubernetes executor: each training job becomes a ``batch/v1`` Job on the cluster.

manifest.py   a pure function from the executor's JobTemplate and a job's stage to the Job (a dict)
executor.py   KubernetesExecutor: the Executor protocol (start, poll stage by stage, cancel, adopt)
failures.py   a Job's phase, why it or its pods failed, why a pod waits
logs.py       the job's log file: executor notes and the pods' logs, archived when a stage ends

The design (how jobs and experiment stages map onto Jobs, why ``backoffLimit: 0``, why a restarted
service adopts running Jobs, what the cluster must provide) is docs/kubernetes-executor.md. Importing
this package does not import the Kubernetes client; creating a Job does.
"""

from services.training.k8s.cluster import kubernetes_clients
from services.training.k8s.executor import KubernetesExecutor, KubernetesHandle
from services.training.k8s.manifest import JobTemplate, job_manifest, job_name

__all__ = [
    "JobTemplate",
    "KubernetesExecutor",
    "KubernetesHandle",
    "job_manifest",
    "job_name",
    "kubernetes_clients",
]
