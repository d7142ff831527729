"""The gRPC contracts: committed stubs are what proto/ generates, and each service's stub matches it."""

from __future__ import annotations

import subprocess
import sys

from services.grpc_stubs import classifier_pb2, synthesis_pb2, training_pb2
from services.grpc_stubs.generate import HERE, PROTOS


def test_committed_stubs_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "services.grpc_stubs.generate", "--check"],
        capture_output=True,
        text=True,
        cwd=HERE.parents[1],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generate_check_detects_a_stale_stub(tmp_path, monkeypatch):
    import services.grpc_stubs.generate as generate

    fake_here = tmp_path / "stubs"
    fake_here.mkdir()
    for path in HERE.glob("*_pb2*"):
        (fake_here / path.name).write_text(path.read_text())
    (fake_here / "training_pb2.py").write_text("# edited by hand\n")
    monkeypatch.setattr(generate, "HERE", fake_here)
    assert generate.main(["--check"]) == 1


def test_contracts_are_versioned_and_name_every_operation():
    assert {p.name for p in PROTOS} == {"synthesis.proto", "classifier.proto", "training.proto"}
    services = {
        "lesionsynth.v1.Synthesis": (
            synthesis_pb2,
            {"Synthesize", "SynthesizeBatch", "GetInfo", "ProposeMask"},
        ),
        "lesionsynth.v1.Classifier": (classifier_pb2, {"Classify", "ClassifyBatch", "GetInfo"}),
        "lesionsynth.v1.Training": (
            training_pb2,
            {"SubmitJob", "GetJob", "ListJobs", "CancelJob", "GetJobLogs", "WatchJob"},
        ),
    }
    for full_name, (module, methods) in services.items():
        service = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[-1]]
        assert service.full_name == full_name
        assert {m.name for m in service.methods} == methods
    watch = training_pb2.DESCRIPTOR.services_by_name["Training"].methods_by_name["WatchJob"]
    assert watch.server_streaming
