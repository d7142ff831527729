"""The Job manifests (services/training/k8s/manifest.py), offline.

- Golden files: the Job dicts of a few representative jobs equal tests/golden/k8s/*.json exactly.
  After a deliberate change: ``LESIONSYNTH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest
  tests/test_k8s_manifest.py`` rewrites them; review the diff (docs/kubernetes-executor.md).
- They pass ``kubernetes-validate --strict`` (the CLI, on a YAML file, for the oldest supported and the
  newest Kubernetes), and the client's model keeps every field (nothing is dropped on the way).
- They have the structure the design promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from services.training import experiment_stages as stages
from services.training.jobstore import JobStore
from services.training.k8s.failures import parse_indexes
from services.training.k8s.manifest import JobTemplate, job_manifest, job_name, scale_quantity
from tests.k8s_fake import (
    EXPERIMENT,
    IMAGE,
    PLAIN,
    FakeCluster,
    demo_units,
    executor_for,
    scheduler_for,
    submit,
)

OLDEST, NEWEST = "1.33.0", "1.37.0"  # backoffLimitPerIndex is GA from 1.33 (beta, on, since 1.29)
GOLDEN = Path(__file__).parent / "golden" / "k8s"
UPDATE_GOLDEN = os.environ.get("LESIONSYNTH_UPDATE_GOLDEN") == "1"
JOB_ID = "0123456789abcdef0123456789abcdef"
#: The paths of docs/deploy_conventions.md (nothing is written there).
TEMPLATE = JobTemplate(
    namespace="lesionsynth",
    image=IMAGE,
    store_root="/data/model-store",
    output_root="/data/outputs",
    datasets_root="/data/datasets",
    gpu=True,
)

#: name -> (template, job type, stage, keyword arguments): the golden files.
GOLDEN_CASES = {
    "export-cpu": (replace(TEMPLATE, gpu=False), "export", "job", {}),
    "train-synthesizer-gpu-4-processes-r2": (
        TEMPLATE,
        "train-synthesizer",
        "job",
        {"attempt": 2, "processes": 4},
    ),
    "experiment-prepare-gpu": (TEMPLATE, "experiment", "prepare", {}),
    "experiment-units-gpu-parallelism-4": (
        replace(TEMPLATE, parallelism=4),
        "experiment",
        "units",
        {"completions": 6},
    ),
    "experiment-series-gpu": (TEMPLATE, "experiment", "series", {}),
    "experiment-aggregate-cpu-no-datasets-r3": (
        replace(
            TEMPLATE,
            gpu=False,
            datasets_root=None,
            cpu="3500m",
            memory="8Gi",
            deadline_seconds=3600,
            ttl_seconds=600,
            image_pull_policy="Always",
        ),
        "experiment",
        "aggregate",
        {"attempt": 3},
    ),
}


def manifests(template: JobTemplate) -> dict[str, dict]:
    n = len(stages.unit_names(EXPERIMENT, template.output_root, JOB_ID))
    experiment = {
        stage: job_manifest(
            template, JOB_ID, "experiment", stage, completions=n if stage == "units" else None
        )
        for stage in ("prepare", "units", "aggregate")
    }
    return {
        "plain": job_manifest(replace(template, gpu=False), JOB_ID, "export"),
        "gpu": job_manifest(template, JOB_ID, "train-synthesizer"),
        **experiment,
    }


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_job_manifests_equal_the_golden_files(name):
    template, job_type, stage, kwargs = GOLDEN_CASES[name]
    manifest = job_manifest(template, JOB_ID, job_type, stage, **kwargs)
    path = GOLDEN / f"{name}.json"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2) + "\n")
    assert path.is_file(), f"{path} is missing: LESIONSYNTH_UPDATE_GOLDEN=1 writes it"
    assert json.loads(path.read_text()) == manifest, (
        f"{name}: the Job differs from {path} (see its docstring)"
    )


def test_the_clients_model_keeps_every_field():
    """The executor sends ``V1Job.from_dict(manifest)``; a field the model does not know would be dropped
    silently, so the round trip must give the manifest back."""
    sanitize = client.ApiClient().sanitize_for_serialization
    for template, job_type, stage, kwargs in GOLDEN_CASES.values():
        manifest = job_manifest(template, JOB_ID, job_type, stage, **kwargs)
        assert sanitize(client.V1Job.from_dict(manifest)) == manifest


# -- the manifests pass kubernetes-validate --strict ----------------------------------------------


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_generated_jobs_pass_kubernetes_validate_strict(tmp_path, version):
    docs = [*manifests(TEMPLATE).values(), job_manifest(TEMPLATE, JOB_ID, "experiment", "series")]
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    run = subprocess.run(
        [str(cli), "--strict", "-k", version, str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(" passed for resource job/") == 6, run.stdout


def test_strict_validation_catches_a_bad_field():
    """The check has teeth: an unknown field fails strict validation (the library, as the CLI does)."""
    import kubernetes_validate

    job = manifests(TEMPLATE)["plain"]
    kubernetes_validate.validate(job, NEWEST, strict=True)
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, NEWEST, strict=True)


def test_a_data_parallel_job_gets_one_gpu_per_process_on_one_node(tmp_path):
    """train-synthesizer with processes=4: one pod (torchrun inside, models/torchrun.py) with 4 GPUs and
    4x the CPU and memory of a one-GPU job; the Job passes strict validation."""
    import kubernetes_validate

    assert [scale_quantity(q, 4) for q in ("4", "16Gi", "500m", "2.5")] == ["16", "64Gi", "2000m", "10"]
    cluster, store = FakeCluster(), JobStore(tmp_path / "jobs" / "jobs.db")
    executor = executor_for(cluster, store, tmp_path, gpu=True, cpu="4", memory="16Gi")
    scheduler = scheduler_for(executor, tmp_path)
    job = submit(store, "train-synthesizer", {**PLAIN, "processes": 4})
    scheduler.tick()
    (name,) = cluster.created()
    body = client.ApiClient().sanitize_for_serialization(cluster.jobs[name])
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
    assert {e["name"]: e["value"] for e in container["env"]}["OMP_NUM_THREADS"] == "16"
    assert body["spec"]["completions"] == 1 and body["spec"]["parallelism"] == 1
    kubernetes_validate.validate(body, NEWEST, strict=True)
    assert store.get(job.id).state == "running"


# -- their structure -------------------------------------------------------------------------------


def test_job_structure():
    docs = manifests(TEMPLATE)
    job_id = "0123456789abcdef0123456789abcdef"
    units = docs["units"]["spec"]
    assert units["completionMode"] == "Indexed"
    assert units["completions"] == demo_units() == 6  # one pod per (strategy, seed)
    assert units["parallelism"] == 6  # default: every unit at once
    assert units["backoffLimitPerIndex"] == 0 and "backoffLimit" not in units  # each unit tried once
    for name, doc in docs.items():
        spec, meta = doc["spec"], doc["metadata"]
        pod = spec["template"]["spec"]
        container = pod["containers"][0]
        assert len(meta["name"]) <= 63 and meta["name"].startswith("lesionsynth-job-0123456789ab")
        assert "ownerReferences" not in meta
        if name != "units":
            assert spec["backoffLimit"] == 0 and spec["completions"] == 1 and "completionMode" not in spec
        assert spec["activeDeadlineSeconds"] == 3 * 24 * 3600 and spec["ttlSecondsAfterFinished"] == 86400
        assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "lesionsynth-training-job"  # deploy/k8s/base/serviceaccounts.yaml
        assert spec["podFailurePolicy"]["rules"][0]["action"] == "Ignore"  # node drain / preemption only
        for labels in (meta["labels"], spec["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/part-of"] == "lesionsynth"
            assert labels["lesionsynth.io/job-id"] == job_id
        # The services' securityContext: non-root 10001, read-only root, /tmp an emptyDir.
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
        assert pod["securityContext"]["fsGroup"] == 10001
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes["tmp"] and mounts["/tmp"]["name"] == "tmp"
        assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == "lesionsynth-model-store"
        assert volumes["outputs"]["persistentVolumeClaim"]["claimName"] == "lesionsynth-outputs"
        assert volumes["datasets"]["persistentVolumeClaim"]["claimName"] == "lesionsynth-datasets"
        assert mounts["/data/datasets"]["readOnly"] and "/data/jobs" not in mounts  # jobs PVC is RWO
        assert not mounts["/data/outputs"].get("readOnly") and not mounts["/data/model-store"].get("readOnly")
        command = container["command"]
        assert command[:3] == ["python", "-m", "services.training.experiment_stages"]
        assert command[command.index("--state-dir") + 1] == f"/data/outputs/.lesionsynth-jobs/{job_id}"
        assert command[command.index("--store") + 1] == "/data/model-store"
        gpu = name != "plain"
        limits = container["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == gpu and limits.get("nvidia.com/gpu") in (None, "1")
        assert container["resources"]["requests"] == limits
        assert (pod.get("nodeSelector") == {"nvidia.com/gpu.present": "true"}) == gpu
        assert bool(pod.get("tolerations")) == gpu
    stages_run = {
        name: doc["spec"]["template"]["spec"]["containers"][0]["command"] for name, doc in docs.items()
    }
    assert [c[c.index("--stage") + 1] for c in stages_run.values()] == [
        "job",
        "job",
        "prepare",
        "unit",
        "aggregate",
    ]


def test_parallelism_and_names():
    job = job_manifest(replace(TEMPLATE, parallelism=2), "a" * 32, "experiment", "units", completions=6)
    assert job["spec"]["parallelism"] == 2 and job["spec"]["completions"] == 6
    wide = replace(TEMPLATE, parallelism=50)
    assert job_manifest(wide, "a" * 32, "experiment", "units", completions=6)["spec"]["parallelism"] == 6
    with pytest.raises(ValueError, match="completions"):
        job_manifest(TEMPLATE, "a" * 32, "experiment", "units")
    assert job_name("a" * 32, "job") == "lesionsynth-job-aaaaaaaaaaaa"
    assert job_name("a" * 32, "aggregate", attempt=3) == "lesionsynth-job-aaaaaaaaaaaa-aggregate-r3"
    assert job_name("a" * 32, "series") == "lesionsynth-job-aaaaaaaaaaaa-series"
    assert parse_indexes("1,3-5") == [1, 3, 4, 5] and parse_indexes(None) == []
