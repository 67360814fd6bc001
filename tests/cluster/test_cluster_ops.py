"""ops/prometheus/cluster_alerts.yml checked by promtool, with its runbooks in docs/cluster.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from skald.cluster.local import find_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "cluster_alerts.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_tool("promtool"), *args], capture_output=True, text=True, cwd=RULES.parent)


def test_cluster_rules_check_and_their_unit_tests_pass() -> None:
    for args in (("check", "rules", RULES.name), ("test", "rules", "cluster_alerts_test.yml")):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_cluster_alert_has_a_runbook_and_uses_cluster_metrics() -> None:
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', (ROOT / "docs" / "cluster.md").read_text()))
    from prometheus_client import CollectorRegistry

    from skald.cluster.service import ClusterMetrics

    registry = CollectorRegistry()
    ClusterMetrics(registry)
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    exported |= {family.name for family in registry.collect()}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            assert url.split("#", 1)[1] in anchors, url
            for name in re.findall(r"\b(skald_[a-z0-9_]+)", rule["expr"]):
                base = re.sub(r"_(bucket|sum|count|total)$", "", name)
                assert name in exported or base in exported, name
