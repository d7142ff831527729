"""The Kubernetes manifests (deploy/k8s): every overlay rendered by the real ``kubectl kustomize``,
validated by ``kubernetes-validate --strict`` against the bundled API schemas, and held to the rules of
docs/deploy_conventions.md by structural checks.

No cluster runs here, so nothing is applied: what is checked is what a cluster would be given. Each
structural check is a function that returns the problems it finds; the tests assert there are none, and
``test_checks_catch_broken_manifests`` feeds deliberately broken copies to show each check can fail.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.harness import SERVICES as HARNESS_SERVICES

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
RULES_FILE = REPO / "deploy" / "prometheus" / "rules" / "lesionsynth.rules.yml"
OVERLAYS = ("local-cpu", "gpu")
KUBECTL = shutil.which("kubectl")
VALIDATE = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not found: install kubectl >= 1.27 (kustomize v5 built in; Debian's kubernetes-client "
    "1.20 is too old), e.g. the google-cloud-cli 'kubectl' package or the Kubernetes apt repository",
)

REGISTRY = "registry.example.com/lesionsynth"
VERSION = "0.1.0"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
# services/harness.py's table: service -> (bentoml target, REST port, gRPC port, gRPC health service name)
SERVICES = {
    name: (s.target, s.rest_port, s.grpc_port, s.grpc_service) for name, s in HARNESS_SERVICES.items()
}
STATELESS = ("synthesis", "classifier")
NAMESPACE = "lesionsynth"
# Kinds without a schema in kubernetes-validate (custom resources): they only WARN there, so they are
# listed here on purpose and checked by hand below; any other kind that only warns is an error (a typo
# in an apiVersion also "only warns").
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Environment every container of ours gets (conventions: "Container filesystem" and "Other env").
COMMON_ENV = {
    "LESIONSYNTH_HOST": "0.0.0.0",
    "BENTOML_HOME": "/tmp/bentoml",
    "BENTOML_DO_NOT_TRACK": "True",
    "HOME": "/tmp",
    "MPLCONFIGDIR": "/tmp/mpl",
    "HF_HUB_OFFLINE": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "LESIONSYNTH_MODEL_STORE": "/data/model-store",
}
SERVICE_ENV = {
    "synthesis": {"LESIONSYNTH_SYNTHESIZER": "latest", "LESIONSYNTH_RELOAD_INTERVAL_S": "60"},
    "classifier": {"LESIONSYNTH_RELOAD_INTERVAL_S": "60"},
    "training": {
        "LESIONSYNTH_JOBS_DIR": "/data/jobs",
        "LESIONSYNTH_DATA_ROOTS": "/data/datasets:/data/outputs",
        "LESIONSYNTH_OUTPUT_ROOT": "/data/outputs",
        "LESIONSYNTH_EXECUTOR": "kubernetes",
    },
}
# mount path -> (claim, read-only?) per service (conventions: "Container filesystem").
MOUNTS = {
    "synthesis": {"/data/model-store": ("lesionsynth-model-store", True)},
    "classifier": {"/data/model-store": ("lesionsynth-model-store", True)},
    "training": {
        "/data/model-store": ("lesionsynth-model-store", False),
        "/data/jobs": ("lesionsynth-jobs", False),
        "/data/datasets": ("lesionsynth-datasets", True),
        "/data/outputs": ("lesionsynth-outputs", False),
    },
}


# ----------------------------------------------------------------------------------------- rendering
def kustomize(path: Path) -> str:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return result.stdout


_RENDERED: dict[str, str] = {}


def rendered_text(overlay: str) -> str:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = kustomize(K8S / "overlays" / overlay)
    return _RENDERED[overlay]


def docs_of(overlay: str) -> list[dict]:
    """A fresh parsed copy (checks and the mutation tests may change it)."""
    return [d for d in yaml.safe_load_all(rendered_text(overlay)) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def deployment(docs, service: str) -> dict:
    return by_kind(docs, "Deployment")[f"lesionsynth-{service}"]


def pod_spec(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def container(docs, service: str) -> dict:
    (c,) = [c for c in pod_spec(deployment(docs, service))["containers"] if c["name"] == service]
    return c


def effective_env(docs, c: dict) -> dict[str, object]:
    """Name -> value (a string, or the valueFrom dict) as the kubelet would assemble it: envFrom
    ConfigMaps first, then env (which wins)."""
    maps = by_kind(docs, "ConfigMap")
    env: dict[str, object] = {}
    for source in c.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in maps, f"envFrom names ConfigMap {ref!r}, which the overlay does not create"
        env.update(maps[ref]["data"])
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def quantity(value) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def our_containers(docs):
    """(deployment name, pod spec, container) of every Deployment's containers."""
    for name, dep in by_kind(docs, "Deployment").items():
        for c in pod_spec(dep)["containers"]:
            yield name, pod_spec(dep), c


# ------------------------------------------------------------------------------------------- checks
def check_security(docs) -> list[str]:
    problems = []
    for name, spec, c in our_containers(docs):
        where = f"{name}/{c['name']}"
        pod_sc = spec.get("securityContext", {})
        sc = c.get("securityContext", {})
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not true")
        if not run_as_user:
            problems.append(f"{where}: no non-zero runAsUser")
        if c["image"] != TRITON_IMAGE and run_as_user != 10001:
            problems.append(f"{where}: runs as uid {run_as_user}, the conventions say 10001")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: capabilities are not exactly drop [ALL]")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{where}: /tmp is not an emptyDir (the root filesystem is read-only)")
        if spec.get("enableServiceLinks") is not False:
            problems.append(f"{name}: enableServiceLinks is not false (injects <SERVICE>_PORT variables)")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name}: uses a host namespace")
    return problems


def check_probes_and_resources(docs) -> list[str]:
    problems = []
    for name, _spec, c in our_containers(docs):
        where = f"{name}/{c['name']}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in c:
                problems.append(f"{where}: no {probe}")
        res = c.get("resources", {})
        for kind in ("cpu", "memory"):
            req, lim = res.get("requests", {}).get(kind), res.get("limits", {}).get(kind)
            if req is None or lim is None:
                problems.append(f"{where}: {kind} request and limit must both be set")
            elif quantity(req) > quantity(lim):
                problems.append(f"{where}: {kind} request {req} above its limit {lim}")
        gpu_req = res.get("requests", {}).get("nvidia.com/gpu")
        gpu_lim = res.get("limits", {}).get("nvidia.com/gpu")
        if (gpu_req is not None or gpu_lim is not None) and str(gpu_req) != str(gpu_lim):
            problems.append(f"{where}: nvidia.com/gpu request {gpu_req} != limit {gpu_lim}")
    env = effective_env(docs, container(docs, "classifier"))
    rest_threads, ort_threads = (
        int(env.get("LESIONSYNTH_CLASSIFIER_THREADS", 4)),
        int(env.get("LESIONSYNTH_ORT_THREADS", 1)),
    )
    if rest_threads > 1 and ort_threads != 1:
        # The measured best (docs/benchmarks/services.md); 4 x 2 threads oversubscribe a 2-CPU limit.
        problems.append(
            f"classifier: {rest_threads} REST threads x {ort_threads} ORT threads: use 1 ORT thread"
        )
    for service, (_target, rest, grpc, health_name) in SERVICES.items():
        c = container(docs, service)
        where = f"lesionsynth-{service}"
        live, ready, start = (
            c.get("livenessProbe", {}),
            c.get("readinessProbe", {}),
            c.get("startupProbe", {}),
        )
        if live.get("httpGet", {}).get("path") != "/livez" or live["httpGet"].get("port") not in (
            "http",
            rest,
        ):
            problems.append(f"{where}: liveness is not HTTP GET /livez on the REST port")
        if ready.get("httpGet", {}).get("path") != "/readyz" or ready["httpGet"].get("port") not in (
            "http",
            rest,
        ):
            problems.append(f"{where}: readiness is not HTTP GET /readyz on the REST port")
        if start.get("grpc", {}).get("port") != grpc or start["grpc"].get("service") not in ("", health_name):
            problems.append(f"{where}: startup probe is not gRPC health on port {grpc}")
        elif start.get("periodSeconds", 10) * start.get("failureThreshold", 3) < 60:
            problems.append(f"{where}: startup budget under 60 s for a model load")
    return problems


def check_conventions(docs) -> list[str]:
    """Commands, ports, environment, volumes and images of the three services."""
    problems = []
    gpu = "lesionsynth-triton" in by_kind(docs, "Deployment")
    for service, (target, rest, grpc, _health) in SERVICES.items():
        where = f"lesionsynth-{service}"
        c = container(docs, service)
        expected_cmd = ["bentoml", "serve", target, "--host", "0.0.0.0", "--port", str(rest)]
        if c.get("command", []) + c.get("args", []) != expected_cmd:
            problems.append(f"{where}: command {c.get('command')} {c.get('args')} != {expected_cmd}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports != {"http": rest, "grpc": grpc}:
            problems.append(f"{where}: container ports {ports} != http {rest}, grpc {grpc}")
        env = effective_env(docs, c)
        wanted = {**COMMON_ENV, **SERVICE_ENV[service], "LESIONSYNTH_GRPC_PORT": str(grpc)}
        for key, value in wanted.items():
            if env.get(key) != value:
                problems.append(f"{where}: {key}={env.get(key)!r}, conventions say {value!r}")
        token = env.get("LESIONSYNTH_API_TOKEN")
        if token != {"secretKeyRef": {"name": "lesionsynth-api-token", "key": "token"}}:
            problems.append(
                f"{where}: LESIONSYNTH_API_TOKEN is not secret lesionsynth-api-token/token: {token}"
            )
        volumes = {v["name"]: v for v in pod_spec(deployment(docs, service)).get("volumes", [])}
        mounts = {
            m["mountPath"]: (
                volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName"),
                bool(m.get("readOnly")),
            )
            for m in c.get("volumeMounts", [])
            if m["mountPath"] != "/tmp"
        }
        if mounts != MOUNTS[service]:
            problems.append(f"{where}: mounts {mounts} != {MOUNTS[service]}")
        gpu_image = gpu and service in ("synthesis", "training")
        image = f"{REGISTRY}/lesionsynth-{service}:{VERSION}{'-gpu' if gpu_image else ''}"
        if c["image"] != image:
            problems.append(f"{where}: image {c['image']} != {image}")
    claims = by_kind(docs, "PersistentVolumeClaim")
    for claim in (
        "lesionsynth-model-store",
        "lesionsynth-jobs",
        "lesionsynth-datasets",
        "lesionsynth-outputs",
    ):
        if claim not in claims:
            problems.append(f"PVC {claim} is missing")
    if "lesionsynth-jobs" in claims and claims["lesionsynth-jobs"]["spec"]["accessModes"] != [
        "ReadWriteOnce"
    ]:
        problems.append("PVC lesionsynth-jobs must be ReadWriteOnce (SQLite WAL on one node)")
    training = deployment(docs, "training")
    if (
        training["spec"].get("replicas") != 1
        or training["spec"].get("strategy", {}).get("type") != "Recreate"
    ):
        problems.append(
            "lesionsynth-training must be replicas 1 with strategy Recreate (one job-database writer)"
        )
    env = effective_env(docs, container(docs, "training"))
    if env.get("LESIONSYNTH_K8S_NAMESPACE") != {"fieldRef": {"fieldPath": "metadata.namespace"}}:
        problems.append("training: LESIONSYNTH_K8S_NAMESPACE does not come from the pod's namespace")
    if env.get("LESIONSYNTH_K8S_IMAGE") != container(docs, "training")["image"]:
        problems.append(
            f"training: LESIONSYNTH_K8S_IMAGE {env.get('LESIONSYNTH_K8S_IMAGE')} is not its own image"
        )
    for obj in docs:
        if obj["kind"] not in ("Namespace",) and obj["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} is not in namespace {NAMESPACE}")
        labels = obj["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/part-of") != "lesionsynth":
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: no app.kubernetes.io/part-of label")
    for name, dep in by_kind(docs, "Deployment").items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"):
            if key not in pod_labels:
                problems.append(f"{name}: pod template has no {key} label")
        if any(pod_labels.get(k) != v for k, v in dep["spec"]["selector"]["matchLabels"].items()):
            problems.append(f"{name}: selector does not match its pod template")
    return problems


def check_services(docs) -> list[str]:
    problems = []
    services = by_kind(docs, "Service")
    for service, (_target, rest, grpc, _health) in SERVICES.items():
        name = f"lesionsynth-{service}"
        svc = services.get(name)
        if svc is None:
            problems.append(f"Service {name} is missing")
            continue
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        if set(ports) != {"http", "grpc"}:
            problems.append(f"Service {name}: ports {sorted(ports)} are not exactly http and grpc")
            continue
        if ports["http"]["port"] != rest or ports["grpc"]["port"] != grpc:
            problems.append(
                f"Service {name}: ports {ports['http']['port']}/{ports['grpc']['port']} != {rest}/{grpc}"
            )
        if ports["grpc"].get("appProtocol") != "grpc":
            problems.append(f"Service {name}: the grpc port has no appProtocol grpc")
        c = container(docs, service)
        container_ports = {p["name"] for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
        for p in ports.values():
            if p.get("targetPort", p["port"]) not in container_ports:
                problems.append(f"Service {name}: targetPort {p.get('targetPort')} is no container port")
        pod_labels = deployment(docs, service)["spec"]["template"]["metadata"]["labels"]
        selector = svc["spec"]["selector"]
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problems.append(f"Service {name}: selector {selector} does not select its Deployment's pods")
    return problems


def check_rbac(docs) -> list[str]:
    problems = []
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        for name in by_kind(docs, kind):
            problems.append(f"{kind}/{name}: nothing cluster-wide is allowed")
    roles = by_kind(docs, "Role")
    if set(roles) != {"lesionsynth-training-jobs"}:
        problems.append(f"Roles {sorted(roles)} != [lesionsynth-training-jobs]")
    allowed = {("batch", "jobs"): {"create", "get", "list", "watch", "delete"}}
    read = {"get", "list", "watch"}
    granted: dict[tuple[str, str], set[str]] = {}
    for role in roles.values():
        for rule in role.get("rules", []):
            if rule.get("resourceNames") or rule.get("nonResourceURLs"):
                problems.append(f"Role {role['metadata']['name']}: unexpected resourceNames/nonResourceURLs")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    granted.setdefault((group, resource), set()).update(rule.get("verbs", []))
    for (group, resource), verbs in granted.items():
        if "*" in verbs or group == "*" or resource == "*":
            problems.append(f"Role grants a wildcard on {group}/{resource}: {sorted(verbs)}")
        elif (group, resource) in allowed:
            if verbs != allowed[(group, resource)]:
                problems.append(
                    f"Role: {group}/{resource} verbs {sorted(verbs)} != {sorted(allowed[(group, resource)])}"
                )
        elif (group, resource) in (("", "pods"), ("", "pods/log")):
            if not verbs <= read:
                problems.append(f"Role: {resource} verbs {sorted(verbs)} go beyond get/list/watch")
        else:
            problems.append(f"Role grants {group or 'core'}/{resource}: {sorted(verbs)}")
    if ("batch", "jobs") not in granted:
        problems.append("Role does not let the training service manage batch/v1 Jobs")
    bindings = by_kind(docs, "RoleBinding")
    binding = bindings.get("lesionsynth-training-jobs")
    if binding is None:
        problems.append("RoleBinding lesionsynth-training-jobs is missing")
    else:
        if binding["roleRef"] != {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "lesionsynth-training-jobs",
        }:
            problems.append(f"RoleBinding refers to {binding['roleRef']}")
        if binding["subjects"] != [
            {"kind": "ServiceAccount", "name": "lesionsynth-training", "namespace": NAMESPACE}
        ]:
            problems.append(f"RoleBinding subjects {binding['subjects']}")
    accounts = by_kind(docs, "ServiceAccount")
    for name, dep in by_kind(docs, "Deployment").items():
        spec = pod_spec(dep)
        account = spec.get("serviceAccountName", "default")
        if account not in accounts:
            problems.append(f"{name}: ServiceAccount {account} is not created")
            continue
        token = spec.get(
            "automountServiceAccountToken", accounts[account].get("automountServiceAccountToken")
        )
        if name == "lesionsynth-training":
            if account != "lesionsynth-training" or token is False:
                problems.append(f"{name}: must run as lesionsynth-training with its token mounted")
        elif token is not False or accounts[account].get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: ServiceAccount {account} token is mounted")
    for account in ("lesionsynth-training-job", "default"):
        if accounts.get(account, {}).get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount {account} must not mount a token")
    return problems


def check_network_and_disruption(docs) -> list[str]:
    problems = []
    policies = by_kind(docs, "NetworkPolicy")
    deny = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
    ]
    if not deny:
        problems.append("no default-deny ingress NetworkPolicy")

    def selects(selector: dict, labels: dict) -> bool:
        for k, v in selector.get("matchLabels", {}).items():
            if labels.get(k) != v:
                return False
        for expr in selector.get("matchExpressions", []):
            value = labels.get(expr["key"])
            op = expr["operator"]
            if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
                return False
            if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
                return False
        return True

    for service in SERVICES:
        labels = deployment(docs, service)["spec"]["template"]["metadata"]["labels"]
        opened = set()
        monitoring = False
        for p in policies.values():
            if not selects(p["spec"]["podSelector"], labels):
                continue
            for rule in p["spec"].get("ingress", []):
                ports = {port.get("port") for port in rule.get("ports", [])}
                opened |= ports
                sources = rule.get("from", [])
                if "http" in ports and any(
                    s.get("namespaceSelector", {})
                    .get("matchLabels", {})
                    .get("network.lesionsynth.io/monitoring")
                    == "true"
                    for s in sources
                ):
                    monitoring = True
        if not {"http", "grpc"} <= opened:
            problems.append(f"lesionsynth-{service}: NetworkPolicies open {opened}, not both http and grpc")
        if not monitoring:
            problems.append(f"lesionsynth-{service}: no NetworkPolicy lets Prometheus scrape the REST port")
    job = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        == "training-job"
    ]
    if not job or "Egress" not in job[0]["spec"]["policyTypes"]:
        problems.append("training Job pods have no egress-restricting NetworkPolicy")
    else:
        egress_ports = {
            (p.get("port"), p.get("protocol")) for r in job[0]["spec"]["egress"] for p in r.get("ports", [])
        }
        if not {(53, "UDP"), (53, "TCP")} <= egress_ports:
            problems.append("training Job pods cannot reach DNS")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for service in STATELESS:
        labels = deployment(docs, service)["spec"]["template"]["metadata"]["labels"]
        if not any(selects(p["spec"]["selector"], labels) for p in pdbs.values()):
            problems.append(f"lesionsynth-{service}: no PodDisruptionBudget")
    for service in STATELESS:
        spread = pod_spec(deployment(docs, service)).get("topologySpreadConstraints", [])
        if "kubernetes.io/hostname" not in {t["topologyKey"] for t in spread}:
            problems.append(f"lesionsynth-{service}: no topology spread over nodes")
    return problems


def check_monitoring(docs) -> list[str]:
    """Prometheus finds every service: pod annotations (plain Prometheus) and, where present, the
    ServiceMonitor's selector and port names (the operator), checked by hand as no schema exists here."""
    problems = []
    for service, (_t, rest, _g, _h) in SERVICES.items():
        annotations = deployment(docs, service)["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(
            rest
        ):
            problems.append(f"lesionsynth-{service}: no prometheus.io scrape annotations for port {rest}")
    services = by_kind(docs, "Service")
    for name, monitor in by_kind(docs, "ServiceMonitor").items():
        if monitor["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"ServiceMonitor {name}: apiVersion {monitor['apiVersion']}")
        spec = monitor["spec"]
        unknown = set(spec) - {"jobLabel", "namespaceSelector", "selector", "endpoints"}
        if unknown:
            problems.append(f"ServiceMonitor {name}: fields {unknown} not checked here")
        selected = [
            s
            for s in services.values()
            if all(
                s["metadata"]["labels"].get(k) == v
                for k, v in spec["selector"].get("matchLabels", {}).items()
            )
            and all(
                s["metadata"]["labels"].get(e["key"]) in e["values"]
                for e in spec["selector"].get("matchExpressions", [])
                if e["operator"] == "In"
            )
        ]
        if not selected:
            problems.append(f"ServiceMonitor {name} selects no Service")
        for endpoint in spec["endpoints"]:
            for s in selected:
                if endpoint["port"] not in {p["name"] for p in s["spec"]["ports"]}:
                    problems.append(
                        f"ServiceMonitor {name}: Service {s['metadata']['name']} has no port {endpoint['port']}"
                    )
            if endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"ServiceMonitor {name}: path {endpoint.get('path')}")
        if spec.get("namespaceSelector", {}).get("matchNames") != [NAMESPACE]:
            problems.append(f"ServiceMonitor {name}: not limited to namespace {NAMESPACE}")
    for name, rule in by_kind(docs, "PrometheusRule").items():
        if rule["spec"]["groups"] != yaml.safe_load(RULES_FILE.read_text())["groups"]:
            problems.append(
                f"PrometheusRule {name} differs from {RULES_FILE.name}: run deploy/prometheus/make_prometheusrule.py"
            )
    return problems


def check_gpu_overlay(docs) -> list[str]:
    problems = []
    deployments = by_kind(docs, "Deployment")
    triton = deployments.get("lesionsynth-triton")
    if triton is None:
        return ["the gpu overlay has no lesionsynth-triton Deployment"]
    (tc,) = pod_spec(triton)["containers"]
    if tc["image"] != TRITON_IMAGE:
        problems.append(f"Triton image {tc['image']} != {TRITON_IMAGE}")
    for name in ("lesionsynth-triton", "lesionsynth-synthesis"):
        spec = pod_spec(deployments[name])
        (c,) = spec["containers"]
        for part in ("requests", "limits"):
            if str(c["resources"].get(part, {}).get("nvidia.com/gpu")) != "1":
                problems.append(f"{name}: {part} nvidia.com/gpu is not 1")
        if spec.get("nodeSelector", {}).get("nvidia.com/gpu.present") != "true":
            problems.append(f"{name}: no nodeSelector nvidia.com/gpu.present=true")
        if not any(
            t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
            for t in spec.get("tolerations", [])
        ):
            problems.append(f"{name}: no toleration for the nvidia.com/gpu taint")
    for name in ("lesionsynth-classifier", "lesionsynth-training"):
        c = pod_spec(deployments[name])["containers"][0]
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
            problems.append(f"{name}: asks for a GPU it does not use")
    version_ref = {"configMapKeyRef": {"name": "lesionsynth-classifier-version", "key": "CLASSIFIER_VERSION"}}
    maps = by_kind(docs, "ConfigMap")
    if "CLASSIFIER_VERSION" not in maps.get("lesionsynth-classifier-version", {}).get("data", {}):
        problems.append("ConfigMap lesionsynth-classifier-version/CLASSIFIER_VERSION is missing")
    triton_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in tc.get("env", [])}
    if triton_env.get("CLASSIFIER_VERSION") != version_ref:
        problems.append("Triton: CLASSIFIER_VERSION does not come from lesionsynth-classifier-version")
    repository = "--model-repository=/data/model-store/classifier-onnx/$(CLASSIFIER_VERSION)/triton"
    if tc.get("command") != ["tritonserver"] or repository not in tc.get("args", []):
        problems.append(f"Triton does not run tritonserver {repository}")
    triton_ports = {p["name"]: p["containerPort"] for p in tc["ports"]}
    if triton_ports != {"http": 8000, "grpc": 8001, "metrics": 8002}:
        problems.append(f"Triton ports {triton_ports}")
    classifier = container(docs, "classifier")
    cenv = effective_env(docs, classifier)
    names = [e["name"] for e in classifier.get("env", [])]
    if cenv.get("TRITON_URL") != "lesionsynth-triton:8001":
        problems.append(f"classifier: TRITON_URL={cenv.get('TRITON_URL')!r}, not lesionsynth-triton:8001")
    if (
        cenv.get("CLASSIFIER_VERSION") != version_ref
        or cenv.get("LESIONSYNTH_CLASSIFIER") != "$(CLASSIFIER_VERSION)"
    ):
        problems.append("classifier: LESIONSYNTH_CLASSIFIER is not the pinned $(CLASSIFIER_VERSION)")
    elif names.index("CLASSIFIER_VERSION") > names.index("LESIONSYNTH_CLASSIFIER"):
        problems.append("classifier: CLASSIFIER_VERSION must be defined before $(CLASSIFIER_VERSION) uses it")
    tsvc = by_kind(docs, "Service").get("lesionsynth-triton", {"spec": {"ports": []}})
    if {p["name"]: p["port"] for p in tsvc["spec"]["ports"]}.get("grpc") != 8001:
        problems.append("Service lesionsynth-triton does not expose gRPC on 8001")
    senv = effective_env(docs, container(docs, "synthesis"))
    if senv.get("LESIONSYNTH_DEVICE") != "cuda":
        problems.append("synthesis: LESIONSYNTH_DEVICE is not cuda")
    tenv = effective_env(docs, container(docs, "training"))
    if tenv.get("LESIONSYNTH_EXECUTOR") != "kubernetes" or tenv.get("LESIONSYNTH_K8S_GPU") != "1":
        problems.append("training: jobs are not Kubernetes Jobs on GPUs (EXECUTOR=kubernetes, K8S_GPU=1)")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    pods_metric = False
    for service in STATELESS:
        name = f"lesionsynth-{service}"
        hpa = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        if not hpa:
            problems.append(f"{name}: no HorizontalPodAutoscaler")
            continue
        (h,) = hpa
        if h["apiVersion"] != "autoscaling/v2" or h["spec"]["scaleTargetRef"]["kind"] != "Deployment":
            problems.append(f"HPA {h['metadata']['name']}: not autoscaling/v2 on a Deployment")
        if h["spec"].get("minReplicas", 1) < 2:
            problems.append(f"HPA {h['metadata']['name']}: minReplicas below 2")
        kinds = {m["type"] for m in h["spec"]["metrics"]}
        cpu = any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in h["spec"]["metrics"])
        if not cpu:
            problems.append(f"HPA {h['metadata']['name']}: no CPU utilisation metric")
        pods_metric |= "Pods" in kinds
        if "replicas" in deployments[name]["spec"]:
            problems.append(f"{name}: spec.replicas set although the HPA owns it")
    if not pods_metric:
        problems.append("no HPA scales on a Pods (request-rate) metric")
    if triton["spec"].get("replicas", 1) < 2:
        problems.append("lesionsynth-triton: fewer than 2 replicas")
    return problems


def check_local_cpu_overlay(docs) -> list[str]:
    problems = []
    text = yaml.safe_dump_all(docs)
    if "nvidia.com/gpu" in text:
        problems.append("local-cpu asks for or selects GPUs")
    if "TRITON_URL" in text or "lesionsynth-triton" in by_kind(docs, "Deployment"):
        problems.append("local-cpu uses Triton; it must score with embedded ONNX Runtime")
    for name, dep in by_kind(docs, "Deployment").items():
        if dep["spec"].get("replicas") != 1:
            problems.append(f"{name}: {dep['spec'].get('replicas')} replicas, local-cpu runs one of each")
    if effective_env(docs, container(docs, "synthesis")).get("LESIONSYNTH_DEVICE") != "cpu":
        problems.append("synthesis: LESIONSYNTH_DEVICE is not cpu")
    if effective_env(docs, container(docs, "training")).get("LESIONSYNTH_K8S_GPU") != "0":
        problems.append("training: Jobs ask for a GPU")
    return problems


COMMON_CHECKS = (
    check_security,
    check_probes_and_resources,
    check_conventions,
    check_services,
    check_rbac,
    check_network_and_disruption,
    check_monitoring,
)
OVERLAY_CHECKS = {"gpu": check_gpu_overlay, "local-cpu": check_local_cpu_overlay}


# -------------------------------------------------------------------------------------------- tests
needs_validator = pytest.mark.skipif(
    not Path(VALIDATE).exists(),
    reason="kubernetes-validate not found: pip install -e '.[deploy]' (PyPI kubernetes-validate==1.37.0)",
)


def validate(path: Path, version: str | None = None) -> subprocess.CompletedProcess:
    command = [VALIDATE, "--strict", "--quiet", str(path)]
    if version:
        command[1:1] = ["-k", version]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@needs_validator
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", [None, "1.30.0"], ids=["k8s-1.37", "k8s-1.30"])
def test_overlay_passes_kubernetes_validate_strict(overlay, version, tmp_path):
    """Every object against the API schema of the default (1.37) and the oldest supported (1.30)
    Kubernetes: unknown fields and wrong types are errors. Custom resources have no bundled schema and
    only warn: exactly the kinds in CUSTOM_KINDS may do so (each is checked in check_monitoring)."""
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(rendered_text(overlay))
    result = validate(out, version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert not errors, "\n".join(errors)
    warned = set()
    for line in output.splitlines():
        if not line.startswith("WARN"):
            continue
        match = re.search(r"Couldn't find schema for kind (\w+) with api version (\S+)", line)
        assert match, f"unexpected warning: {line}"
        warned.add((match.group(1), match.group(2)))
    present = {(d["kind"], d["apiVersion"]) for d in docs_of(overlay) if d["kind"] in CUSTOM_KINDS}
    assert warned == present, f"only custom resources may lack a schema: warned {warned}, expected {present}"
    assert all(kind in CUSTOM_KINDS for kind, _ in warned)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_structure(overlay):
    docs = docs_of(overlay)
    problems = [p for check in (*COMMON_CHECKS, OVERLAY_CHECKS[overlay]) for p in check(docs)]
    assert not problems, "\n".join(problems)


def test_gpu_overlay_ships_the_operator_objects():
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs_of("gpu")}
    assert ("ServiceMonitor", "lesionsynth-services") in kinds
    assert ("ServiceMonitor", "lesionsynth-triton") in kinds
    assert ("PrometheusRule", "lesionsynth") in kinds
    assert not {k for k, _ in kinds} & CUSTOM_KINDS & {d["kind"] for d in docs_of("local-cpu")}


def _mutations():
    """(description, overlay, function that breaks a parsed copy, the check that must notice)."""

    def dep(docs, name):
        return by_kind(docs, "Deployment")[name]

    def ctr(docs, name):
        return pod_spec(dep(docs, name))["containers"][0]

    return [
        (
            "root filesystem writable",
            "local-cpu",
            lambda d: ctr(d, "lesionsynth-classifier")["securityContext"].update(
                readOnlyRootFilesystem=False
            ),
            check_security,
        ),
        (
            "runs as root",
            "gpu",
            lambda d: ctr(d, "lesionsynth-synthesis")["securityContext"].update(runAsUser=0),
            check_security,
        ),
        (
            "capability added",
            "gpu",
            lambda d: ctr(d, "lesionsynth-triton")["securityContext"]["capabilities"].update(
                add=["NET_ADMIN"]
            ),
            check_security,
        ),
        (
            "no readiness probe",
            "local-cpu",
            lambda d: ctr(d, "lesionsynth-training").pop("readinessProbe"),
            check_probes_and_resources,
        ),
        (
            "no memory limit",
            "gpu",
            lambda d: ctr(d, "lesionsynth-classifier")["resources"]["limits"].pop("memory"),
            check_probes_and_resources,
        ),
        (
            "classifier ORT threads oversubscribing its REST threads",
            "gpu",
            lambda d: next(
                m for m in by_kind(d, "ConfigMap").values() if "LESIONSYNTH_ORT_THREADS" in m["data"]
            )["data"].update(LESIONSYNTH_ORT_THREADS="2"),
            check_probes_and_resources,
        ),
        (
            "startup probe on the wrong port",
            "gpu",
            lambda d: ctr(d, "lesionsynth-synthesis")["startupProbe"]["grpc"].update(port=50052),
            check_probes_and_resources,
        ),
        (
            "Service without gRPC",
            "local-cpu",
            lambda d: by_kind(d, "Service")["lesionsynth-classifier"]["spec"]["ports"].pop(),
            check_services,
        ),
        (
            "image off the conventions",
            "local-cpu",
            lambda d: ctr(d, "lesionsynth-synthesis").update(image=f"{REGISTRY}/synth:latest"),
            check_conventions,
        ),
        (
            "classifier off Triton",
            "gpu",
            lambda d: ctr(d, "lesionsynth-classifier").update(
                env=[e for e in ctr(d, "lesionsynth-classifier")["env"] if e["name"] != "TRITON_URL"]
            ),
            check_gpu_overlay,
        ),
        (
            "Triton without a GPU",
            "gpu",
            lambda d: ctr(d, "lesionsynth-triton")["resources"]["requests"].pop("nvidia.com/gpu"),
            check_gpu_overlay,
        ),
        (
            "Role may read secrets",
            "gpu",
            lambda d: by_kind(d, "Role")["lesionsynth-training-jobs"]["rules"].append(
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
            ),
            check_rbac,
        ),
        (
            "Role cannot delete Jobs",
            "local-cpu",
            lambda d: by_kind(d, "Role")["lesionsynth-training-jobs"]["rules"][0]["verbs"].remove("delete"),
            check_rbac,
        ),
        (
            "a ClusterRole",
            "local-cpu",
            lambda d: d.append(
                {
                    "kind": "ClusterRole",
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "metadata": {"name": "x", "labels": {"app.kubernetes.io/part-of": "lesionsynth"}},
                    "rules": [],
                }
            ),
            check_rbac,
        ),
        (
            "synthesis token mounted",
            "gpu",
            lambda d: pod_spec(dep(d, "lesionsynth-synthesis")).update(automountServiceAccountToken=True),
            check_rbac,
        ),
        (
            "no default deny",
            "gpu",
            lambda d: d.remove(by_kind(d, "NetworkPolicy")["default-deny-ingress"]),
            check_network_and_disruption,
        ),
        (
            "ServiceMonitor on a missing port",
            "gpu",
            lambda d: by_kind(d, "ServiceMonitor")["lesionsynth-services"]["spec"]["endpoints"][0].update(
                port="metrics"
            ),
            check_monitoring,
        ),
    ]


@pytest.mark.parametrize("description,overlay,breaks,check", _mutations(), ids=[m[0] for m in _mutations()])
def test_checks_catch_broken_manifests(description, overlay, breaks, check):
    docs = docs_of(overlay)
    assert not check(docs), f"the unbroken {overlay} overlay already fails {check.__name__}"
    broken = copy.deepcopy(docs)
    breaks(broken)
    assert check(broken), f"{check.__name__} did not notice: {description}"


@needs_validator
def test_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    """The validator is strict for real: a misspelt field in a Deployment fails it."""
    broken = [d for d in docs_of("local-cpu") if d["kind"] == "Deployment"][:1]
    broken[0]["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken))
    result = validate(path)
    assert result.returncode != 0 and "readinessprobe" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("exported", "ok", "says"),
    [
        ("gpu", True, "GPU instances"),
        ("cpu", False, "exported for CPU instances"),
        (None, False, "has no Triton repository"),
    ],
)
def test_triton_init_container_refuses_a_cpu_export(tmp_path, exported, ok, says):
    """The gpu overlay's check-gpu-export script, run as rendered, on a model store written by our own
    exporter (config_pbtxt), as the pod would see it."""
    from models.export.triton import config_pbtxt

    init = {
        c["name"]: c
        for c in pod_spec(by_kind(docs_of("gpu"), "Deployment")["lesionsynth-triton"])["initContainers"]
    }
    container = init["check-gpu-export"]
    version = "v1"
    if exported:
        folder = tmp_path / "classifier-onnx" / version / "triton" / "lesion_classifier"
        folder.mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config_pbtxt("lesion_classifier", 64, instance_kind=exported))
    script = container["args"][0].replace("/dev/termination-log", str(tmp_path / "termination-log"))
    env = {"PATH": os.environ["PATH"], "CLASSIFIER_VERSION": version, "MODEL_STORE": str(tmp_path)}
    assert {e["name"] for e in container["env"]} == {"CLASSIFIER_VERSION", "MODEL_STORE"}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    assert says in result.stdout
    if not ok:
        assert says in (tmp_path / "termination-log").read_text()
