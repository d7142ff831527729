"""The short fuzz run CI does (the long one: `make fuzz`, docs/fuzz.md): schemathesis with every check on
every service's OpenAPI (error bodies as declared, schema-valid requests accepted or 422, schema-invalid
ones refused, no 5xx) and malformed/oversized/random gRPC messages; no INTERNAL, still serving afterwards."""

from __future__ import annotations

import pytest
from service_process import TARGETS, ServiceProcess, model_env

from loadtests.fuzz import fuzz_grpc, fuzz_rest

pytestmark = pytest.mark.timeout(600)
MAX_BYTES = 1024 * 1024


@pytest.mark.parametrize("name", ["synthesis", "classifier", "training"])
def test_fuzz_passes_every_check(name, tmp_path, tiny_synth, serving_classifier):
    env = {
        **model_env(name, tmp_path, tiny_synth, serving_classifier),
        "LESIONSYNTH_MAX_REQUEST_BYTES": str(MAX_BYTES),
    }
    with ServiceProcess(TARGETS[name], tmp_path / "svc", env) as svc:
        rest = fuzz_rest(svc.url, examples=5)
        assert rest["cases"] >= 50 and rest["failures"] == 0 and rest["exit_code"] == 0, rest["tail"]
        grpc_result = fuzz_grpc(svc.grpc_target, name, cases=150, max_bytes=MAX_BYTES)
        assert not grpc_result["server_faults"], grpc_result
        assert grpc_result["serving_after"]
        assert (
            grpc_result["codes"].get("INVALID_ARGUMENT", 0) > 0
            and grpc_result["codes"].get("RESOURCE_EXHAUSTED", 0) > 0
        )
