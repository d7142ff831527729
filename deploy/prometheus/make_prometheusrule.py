"""Write prometheusrule.yaml (a monitoring.coreos.com/v1 PrometheusRule) from rules/lesionsynth.rules.yml.

The rules file is the source (promtool checks and unit-tests it); the Prometheus operator only reads
rules from PrometheusRule objects, so this copies its groups verbatim into one. Run after editing the
rules; tests/test_prometheus_rules.py fails while the two differ:

    .venv/bin/python deploy/prometheus/make_prometheusrule.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "rules" / "lesionsynth.rules.yml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = """\
# GENERATED from rules/lesionsynth.rules.yml by make_prometheusrule.py: edit the rules file, then run
#   .venv/bin/python deploy/prometheus/make_prometheusrule.py
# The same rules for the Prometheus operator (which reads PrometheusRule objects, not rule files). Its
# ruleSelector must match the labels below (kube-prometheus-stack: the Helm release label).
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def build() -> dict:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "lesionsynth",
            "namespace": "lesionsynth",
            "labels": {"app.kubernetes.io/part-of": "lesionsynth", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    return HEADER + yaml.dump(build(), Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
