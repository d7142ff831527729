"""Rehearse an image's build and start without a container engine: its Python environment, for real.

No Docker engine and no registry run here (../shared/STACK.md), so the images cannot be built. What can
be checked is the part most likely to break: that the role's requirements file is a complete, consistent
environment and that the service starts from it and answers. For each image this script reads its
Dockerfile and does what it says, outside a container:

1. builder: a fresh venv with the Dockerfile's pip pin; ``pip install --no-deps -r <its requirements
   file>``; ``pip check``; the app with ``pip install --no-deps --no-build-isolation .``;
2. runtime: a copy of the files the runtime stage COPYs (``proto/``, ``models/``, ``services/``), made
   read-only; the runtime stage's ENV, with the paths the container would mount (/tmp, /data/model-store)
   replaced by local folders; its CMD, run from there; ``/readyz`` and one real request; its HEALTHCHECK
   command, run as written.

What stays unchecked: the base image (python:3.11.18-slim-bookworm; here the machine's CPython 3.11), the
OS packages, the CUDA libraries of GPU variants (their ONNX Runtime falls back to the CPU here: no GPU),
uid 10001 and a truly read-only root filesystem.

    python deploy/docker/rehearse.py classifier classifier.gpu [--store runs/model-store]

Writes docs/images.json + docs/images.md (one row per image).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: python deploy/docker/rehearse.py
from services.harness import ServiceProcess, free_ports  # noqa: E402

DOCKER = REPO / "deploy" / "docker"


def parse_dockerfile(path: Path) -> dict:
    """The facts of a Dockerfile this rehearsal needs (our Dockerfiles' conventions, not Docker's grammar)."""
    text = path.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    if len(stages) != 2:
        raise SystemExit(f"{path.name}: expected a builder and a runtime stage")
    builder, runtime = stages
    lines = " ".join(line.rstrip("\\") for line in runtime.splitlines())  # join continuations
    env: dict[str, str] = {}
    for match in re.finditer(
        r"\bENV\s+(.*?)(?=\s(?:WORKDIR|COPY|RUN|USER|EXPOSE|HEALTHCHECK|CMD|ARG|LABEL)\b)", lines
    ):
        for item in shlex.split(match.group(1)):
            key, _, value = item.partition("=")
            env[key] = value
    requirements = re.search(r"COPY (deploy/docker/requirements/\S+) /tmp/requirements.txt", builder)
    pip = re.search(r"pip install (pip==\S+)", builder)
    cmd = re.search(r"^CMD (\[.*\])$", runtime, re.M)
    health = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", re.sub(r"\\\n\s*", " ", runtime), re.M)
    copies = re.findall(r"^COPY (?!--from)(\S+) \./\S+$", runtime, re.M)
    if not (requirements and pip and cmd and health):
        raise SystemExit(f"{path.name}: cannot find the requirements file, pip pin, CMD or HEALTHCHECK")
    return {
        "requirements": REPO / requirements.group(1),
        "pip": pip.group(1),
        "env": env,
        "cmd": json.loads(cmd.group(1)),
        "healthcheck": json.loads(health.group(1)),
        "copies": copies,
    }


def run(command: list[str], **kwargs) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return time.perf_counter() - started


def build(facts: dict, work: Path) -> dict:
    venv = work / "venv"
    python = venv / "bin" / "python"
    steps = {}
    steps["venv_s"] = run([sys.executable, "-m", "venv", str(venv)])
    steps["pip_pin_s"] = run([str(python), "-m", "pip", "install", "-q", facts["pip"]])
    steps["requirements_s"] = run(
        # Fail fast (one retry) on an index that cannot be reached: the reason is recorded, not waited for.
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--retries",
            "1",
            "--timeout",
            "30",
            "--no-deps",
            "-r",
            str(facts["requirements"]),
        ]
    )
    steps["pip_check_s"] = run([str(python), "-m", "pip", "check"])
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "models", "services"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    steps["app_s"] = run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)], cwd=work
    )
    packages = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    return {"python": python, "steps": steps, "packages": len(json.loads(packages))}


def read_only_app(facts: dict, work: Path) -> Path:
    app = work / "app"
    app.mkdir()
    for name in facts["copies"]:
        shutil.copytree(REPO / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [app, *app.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return app


def service_env(facts: dict, python: Path, tmp: Path, store: Path, port_grpc: int) -> dict[str, str]:
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for key, value in facts["env"].items():
        value = value.replace("$PATH", env["PATH"]).replace("/app/.venv", str(python.parent.parent))
        value = value.replace("/tmp", str(tmp)).replace("/data/model-store", str(store))
        value = value.replace("/data/", f"{tmp.parent / 'data'}/")  # the job volumes (training)
        env[key] = value
    env["PATH"] = env.get("PATH", f"{python.parent}:/usr/bin:/bin")
    if "LESIONSYNTH_DEVICE" in env and not Path("/dev/nvidiactl").exists():
        env["LESIONSYNTH_DEVICE"] = "cpu"  # a GPU image on a machine without a GPU: its CUDA is unchecked
    env["LESIONSYNTH_HOST"] = "127.0.0.1"
    env["LESIONSYNTH_GRPC_PORT"] = str(port_grpc)
    return env


def exercise(role: str, url: str, sample_png: bytes) -> str:
    """One real request per role; raises (httpx) when it fails."""
    if role == "classifier":
        r = httpx.post(url + "/classify", files={"image": ("x.png", sample_png, "image/png")}, timeout=60)
        r.raise_for_status()
        return f"/classify -> probability {r.json()['probability']:.3f}"
    if role == "synthesis":
        from PIL import Image, ImageDraw

        mask = Image.new("L", Image.open(io.BytesIO(sample_png)).size, 0)
        w, h = mask.size
        ImageDraw.Draw(mask).ellipse((w // 3, h // 3, 2 * w // 3, 2 * h // 3), fill=255)
        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        files = {"image": ("x.png", sample_png, "image/png"), "mask": ("m.png", buf.getvalue(), "image/png")}
        r = httpx.post(url + "/synthesize", files=files, data={"steps": "2", "seed": "1"}, timeout=120)
        r.raise_for_status()
        return f"/synthesize -> {Image.open(io.BytesIO(r.content)).size[0]} px PNG"
    r = httpx.post(url + "/job_types", timeout=30)
    r.raise_for_status()
    return f"/job_types -> {len(r.json())} job types"


def sample_png() -> bytes:
    from PIL import Image

    ph2 = REPO.parent / "shared" / "data" / "ph2"
    images = sorted((ph2 / "256" / "ph2" / "images").glob("*.png")) if ph2.is_dir() else []
    if images:
        return images[0].read_bytes()
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (180, 120, 100)).save(buf, format="PNG")
    return buf.getvalue()


def rehearse(image: str, store: Path) -> dict:
    dockerfile = DOCKER / f"{image}.Dockerfile"
    role = image.split(".")[0]
    facts = parse_dockerfile(dockerfile)
    result: dict = {
        "image": image,
        "dockerfile": str(dockerfile.relative_to(REPO)),
        "requirements": str(facts["requirements"].relative_to(REPO)),
    }
    with tempfile.TemporaryDirectory(prefix=f"rehearse-{image}-") as tmp_dir:
        work = Path(tmp_dir)
        print(f"{image}: building the venv from {result['requirements']} ...", flush=True)
        built = build(facts, work)
        result.update(
            packages=built["packages"], build_seconds={k: round(v, 1) for k, v in built["steps"].items()}
        )
        app = read_only_app(facts, work)
        tmp = work / "tmp"
        tmp.mkdir()
        for volume in ("datasets", "outputs", "jobs"):  # the training pod's mounted volumes
            (work / "data" / volume).mkdir(parents=True)
        port = facts["cmd"][facts["cmd"].index("--port") + 1]  # the image's REST port (its HEALTHCHECK's)
        rest, grpc_port = free_ports(2)
        cmd = [built["python"].parent / facts["cmd"][0], *facts["cmd"][1:]]
        cmd = [str(c) for c in cmd]
        cmd[cmd.index("--port") + 1] = str(rest)
        cmd[cmd.index("--host") + 1] = "127.0.0.1"
        env = service_env(facts, built["python"], tmp, store, grpc_port)
        svc = ServiceProcess(
            facts["cmd"][2],
            work,
            env,
            rest_port=rest,
            grpc_port=grpc_port,
            log_path=work / "service.log",
            cwd=app,
            command=cmd,
        )
        started = time.perf_counter()
        try:
            svc.spawn().wait_ready(180)
            result["ready_seconds"] = round(time.perf_counter() - started, 1)
            result["request"] = exercise(role, svc.url, sample_png())
            health = [str(built["python"]) if c == "python" else c for c in facts["healthcheck"]]
            health = [c.replace(f"127.0.0.1:{port}", f"127.0.0.1:{rest}") for c in health]
            result["healthcheck_exit"] = subprocess.run(health, env=env, check=False, timeout=30).returncode
            writes = [str(p.relative_to(app)) for p in app.rglob("*") if p.stat().st_mode & stat.S_IWUSR]
            result["app_dir_writes"] = writes
        finally:
            svc.stop(grace_s=30)
            for path in [app, *app.rglob("*")]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)  # so the temp dir can be removed
        result["ok"] = result["healthcheck_exit"] == 0 and not result["app_dir_writes"]
    print(f"{image}: {'ok' if result['ok'] else 'FAILED'} ({result['request']})", flush=True)
    return result


def failure_reason(output: str) -> str:
    """The line that says why (pip's "Cannot install ...", a service's last error), for the table."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    unreachable = sorted(set(re.findall(r"host='([^']+)'.*?(?:Failed to resolve|Max retries)", output)))
    for line in lines:
        if line.startswith(
            ("ERROR: Cannot install", "ERROR: No matching distribution", "ERROR: Could not find")
        ):
            why = line.removeprefix("ERROR: ")
            if unreachable:
                why += f" (index unreachable from here: {', '.join(unreachable)})"
            return why.replace("|", "/")
    return " ".join(lines[-3:])[-400:].replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "images", nargs="+", help="e.g. classifier classifier.gpu (deploy/docker/<image>.Dockerfile)"
    )
    parser.add_argument(
        "--store", type=Path, default=REPO / "runs" / "model-store", help="a model store (make serve's)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--update", action="store_true", help="keep the other images' rows of --out")
    args = parser.parse_args(argv)
    if not (args.store / "classifier-onnx").is_dir():
        raise SystemExit(f"no classifier-onnx models in {args.store}: run `make serve` once, or pass --store")
    results = []
    for image in args.images:
        try:
            results.append(rehearse(image, args.store.resolve()))
        except (
            RuntimeError,
            httpx.HTTPError,
        ) as exc:  # a failed step: recorded with its output, the next image goes on
            print(f"{image}: FAILED\n{exc}", flush=True)
            results.append({"image": image, "ok": False, "error": str(exc)[-1500:]})
    command = "python deploy/docker/rehearse.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run_info = {"command": command, "date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0]}
    for r in results:
        r["run"] = run_info
    previous = args.out.with_suffix(".json")
    if args.update and previous.is_file():
        # Keep the rows of images not rehearsed this time (each row says which run produced it).
        rehearsed = {r["image"] for r in results}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["image"] not in rehearsed]
        order = {name: i for i, name in enumerate(IMAGES)}
        results = sorted([*kept, *results], key=lambda r: order.get(r["image"], len(order)))
    args.out.with_suffix(".json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(results))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0 if all(r["ok"] for r in results) else 1


IMAGES = ("classifier", "classifier.gpu", "synthesis", "synthesis.gpu", "training", "training.gpu")


def render(results: list[dict]) -> str:
    runs = {json.dumps(r["run"], sort_keys=True): r["run"] for r in results}
    md = [
        "# Image rehearsals: each image's Python environment built and started without a container engine",
        "",
        "What it does and what it cannot check: deploy/docker/rehearse.py's docstring. GPU images run on the",
        "CPU here (LESIONSYNTH_DEVICE=cpu; ONNX Runtime's CUDA provider absent): their CUDA is unchecked.",
        "",
    ]
    md += [
        f"- `{run['command']}` ({run['date']}, CPython {run['python']}; the images use 3.11.18)"
        for run in runs.values()
    ]
    md += [
        "",
        "| image | requirements | packages | pip install s | pip check | ready s | request | HEALTHCHECK | writes in app dir | ok |",
        "|---|---|---:|---:|---|---:|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            md.append(f"| {r['image']} | | | | | | failed: {failure_reason(r['error'])} | | | **no** |")
            continue
        md.append(
            f"| {r['image']} | {r['requirements']} | {r['packages']} | {r['build_seconds']['requirements_s']} | passed | "
            f"{r['ready_seconds']} | {r['request']} | exit {r['healthcheck_exit']} | {len(r['app_dir_writes'])} | "
            f"{'yes' if r['ok'] else '**no**'} |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
