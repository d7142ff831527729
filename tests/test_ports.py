"""tests/ports.py: test servers get ports nobody else is handed in the meantime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ports


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
