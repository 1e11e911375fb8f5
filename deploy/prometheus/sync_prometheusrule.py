#!/usr/bin/env python3
"""Write deploy/prometheus/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

alerts.yaml (a plain Prometheus rule file) is the single source of truth; the PrometheusRule is
the same groups wrapped for the Prometheus Operator. Run after editing alerts.yaml:

    python3 deploy/prometheus/sync_prometheusrule.py           # rewrite prometheusrule.yaml
    python3 deploy/prometheus/sync_prometheusrule.py --check   # exit 1 if it is out of date

Needs only PyYAML. tests/deploy/test_alerts.py runs the --check comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yaml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/sync_prometheusrule.py:
# do not edit; edit alerts.yaml and run the script (tests/deploy/test_alerts.py checks they agree).
#
# The alert rules as a PrometheusRule for the Prometheus Operator (kube-prometheus-stack). It needs
# the operator's CRDs, so it is not part of deploy/kubernetes/base:
#   kubectl -n sfs-cleanup apply -f deploy/prometheus/prometheusrule.yaml
# The operator only loads rules whose labels match its ruleSelector; kube-prometheus-stack's
# default is release=<its Helm release name>: add that label here (or in an overlay) if needed.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sfs-cleanup",
            "namespace": "sfs-cleanup",
            "labels": {
                "app.kubernetes.io/name": "sfs-turbo-cleanup",
                "app.kubernetes.io/component": "alerts",
                "app.kubernetes.io/part-of": "sfs-turbo-cleanup",
            },
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.name} is out of date: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
