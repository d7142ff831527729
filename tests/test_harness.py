"""services/harness.py: servers get ports nobody else is handed in the meantime; the table of services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services import harness as ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    got = ports.free_ports(6)
    assert len(set(got)) == 6
    low = ports._ephemeral_low()
    assert all(ports.PORT_RANGE[0] <= p < low for p in got)
    assert all(ports._bindable(p) for p in got)
    # A second call in the same process never repeats a port it handed out.
    assert not set(got) & set(ports.free_ports(6))


def test_a_port_held_by_a_live_process_is_not_handed_out_and_a_dead_ones_is(tmp_path, monkeypatch):
    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "25000").write_text(str(holder.pid))
        assert not ports._reserve(25000)
    finally:
        holder.kill()
        holder.wait()
    assert ports._reserve(25000)  # its owner exited: the stale reservation is reclaimed
    assert Path(tmp_path / "25000").read_text() == str(__import__("os").getpid())


def test_a_service_that_loses_a_port_race_moves_to_new_ports(tmp_path):
    """What failed CI once: another process bound the gRPC port between allocation and start."""
    import socket

    import httpx
    from service_process import TARGETS, ServiceProcess, model_env

    svc = ServiceProcess(
        TARGETS["training"], tmp_path / "svc", model_env("training", tmp_path, tmp_path, tmp_path)
    )
    taken = svc.grpc_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with svc:
            assert svc.grpc_port != taken
            assert httpx.get(svc.url + "/readyz").status_code == 200
    assert "address already in use" in svc.log().lower()


def test_the_files_that_cannot_import_the_table_agree_with_it():
    """services/harness.py's SERVICES is the one source of ports in Python; the README's table, the
    Prometheus config of `make serve` and the Makefile's readiness loop repeat them (the Dockerfiles and
    manifests are checked by test_deploy_images.py and test_deploy_manifests.py)."""
    import re

    import yaml

    specs = ports.SERVICES.values()
    readme = (ports.REPO / "README.md").read_text()
    for spec in specs:
        row = re.search(rf"^\| {spec.name}[^|]*\| (\S+) \| (\S+) \|$", readme, re.M)
        assert row, f"README's services table lacks {spec.name}"
        assert row.groups() == (f"http://127.0.0.1:{spec.rest_port}", f"127.0.0.1:{spec.grpc_port}")
    prometheus = yaml.safe_load((ports.REPO / "deploy" / "prometheus" / "prometheus.local.yml").read_text())
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in prometheus["scrape_configs"]
    }
    for spec in specs:
        assert targets[f"lesionsynth-{spec.name}"] == [f"127.0.0.1:{spec.rest_port}"]
    makefile = (ports.REPO / "Makefile").read_text()
    loop = re.search(r"for port in ([\d ]+); do curl", makefile)
    assert loop and loop.group(1).split() == [str(s.rest_port) for s in specs]


def test_each_service_reads_its_default_grpc_port_from_the_table(monkeypatch):
    from services.classifier.settings import ClassifierSettings
    from services.synthesis.settings import SynthesisSettings
    from services.training.settings import TrainingSettings

    monkeypatch.delenv("LESIONSYNTH_GRPC_PORT", raising=False)
    for name, settings in (
        ("synthesis", SynthesisSettings),
        ("classifier", ClassifierSettings),
        ("training", TrainingSettings),
    ):
        assert settings.from_env().common.grpc_port == ports.SERVICES[name].grpc_port
