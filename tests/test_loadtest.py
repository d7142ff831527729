"""The short load test CI runs (the long one: `make loadtest`, docs/loadtest.md): locust, headless, a few
users for a few seconds per scenario against real services; no failures."""

from __future__ import annotations

import pytest
from service_process import TARGETS, ServiceProcess, model_env

from loadtests.run_load import SCENARIOS, run_scenario

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("service", ["synthesis", "classifier"])
def test_locust_scenarios_run_without_failures(
    service, tmp_path, tiny_synth, serving_classifier, demo_manifest, monkeypatch
):
    monkeypatch.setenv("LESIONSYNTH_LOADTEST_MANIFEST", str(demo_manifest))
    env = model_env(service, tmp_path, tiny_synth, serving_classifier)
    with ServiceProcess(TARGETS[service], tmp_path / "svc", env) as svc:
        for scenario in [s for s in SCENARIOS if s.service == service]:
            row = run_scenario(
                scenario,
                svc.url,
                svc.grpc_target,
                users=3,
                spawn_rate=3,
                duration=4,
                csv_prefix=tmp_path / scenario.name,
                synthesis_steps=2,
            )
            assert row["requests"] > 0 and row["failures"] == 0, row
            assert row["p50_ms"] > 0
