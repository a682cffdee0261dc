"""The chart's PrometheusRule against Prometheus' own tool: every expression and template passes
``promtool check rules`` (with the default and with other values), and ``promtool test rules``
shows each alert firing on the series it is for and not on the healthy ones beside them
(monitoring_rules_test.yaml); every query of the Grafana dashboard parses as PromQL. Needs
promtool, built by hack/build-k8s.sh (integration tier)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import dashboard
from chart_helpers import rule_groups
from localkube import binaries

pytestmark = pytest.mark.integration

CASES = Path(__file__).with_name("monitoring_rules_test.yaml")


@pytest.fixture(scope="module")
def promtool() -> Path:
    return binaries.ensure(("promtool",))["promtool"]


def _promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _write_rules(directory: Path, values: dict[str, Any] | None = None) -> Path:
    path = directory / "modelship-rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(values), sort_keys=False))
    return path


def _alerts(groups: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in groups["groups"] for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize(
    "values",
    [
        None,
        {
            "monitoring": {
                "rules": {
                    "alertLabels": {"team": "ml-platform"},
                    "availability": 0.99,
                    "latency": {"thresholdSeconds": "1.0", "target": 0.95},
                    "drift": {"threshold": 0.1, "for": "1h"},
                    "degradedFor": "30m",
                    "rollbackFor": "2h",
                    "buildFailuresPerHour": 3,
                }
            }
        },
    ],
    ids=["defaults", "tuned"],
)
def test_every_rule_passes_promtool_check(
    promtool: Path, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    rules = _write_rules(tmp_path, values)
    result = _promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 16 rules found" in result.stdout, result.stdout


def test_each_alert_fires_on_its_series_and_not_on_healthy_ones(
    promtool: Path, tmp_path: Path
) -> None:
    _write_rules(tmp_path)
    cases = shutil.copy(CASES, tmp_path / CASES.name)
    result = _promtool(promtool, "test", "rules", str(cases))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_a_promtool_case_that_fires_it() -> None:
    tests = yaml.safe_load(CASES.read_text())["tests"]
    fired = {
        case["alertname"]
        for group in tests
        for case in group.get("alert_rule_test") or []
        if case["exp_alerts"]
    }
    assert fired == _alerts(rule_groups()), "add a case to monitoring_rules_test.yaml"


def test_every_dashboard_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """promtool has no query linter; recording rules of the queries (variables filled in as
    Grafana does) get their PromQL parsed and checked."""
    rules = [
        {"record": f"dashboard:query:{n}", "expr": dashboard.instantiate(expr, "ml", "model")}
        for n, (_, expr) in enumerate(dashboard.queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
