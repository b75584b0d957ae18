"""alerts/spotrun.rules.yaml: promtool accepts it, its unit tests pass, and every alert is
documented and selects only agreed metric names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import ALERT_TESTS, ALERTS_FILE, allowed_series, metric_names, run

REQUIRED_ALERTS = {
    "SpotrunCheckpointStale",
    "SpotrunPreemptionStorm",
    "SpotrunBudgetNearlySpent",
    "SpotrunOperatorDown",
    "SpotrunOperatorAbsent",
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules(promtool: Path) -> None:
    result = run([str(promtool), "check", "rules", str(ALERTS_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests(promtool: Path) -> None:
    result = run([str(promtool), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    assert {r["alert"] for r in alert_rules()} >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_is_documented_and_debounced(rule: dict[str, Any]) -> None:
    assert rule.get("for"), "every alert needs a for: duration"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_selects_only_agreed_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, f"{rule['alert']} selects no metric"
    assert names <= allowed_series(), f"unknown metric names {sorted(names - allowed_series())}"


def test_metric_name_scanner() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, signal) (rate(spotrun_recovery_seconds_bucket"
        '{namespace="a-b", run=~"x.*"}[5m] offset 1h))) > on (namespace) group_left () '
        '2 * spotrun_checkpoint_interval_seconds or vector(0) unless absent(up{job="j"})'
    )
    assert metric_names(expr) == {
        "spotrun_recovery_seconds_bucket",
        "spotrun_checkpoint_interval_seconds",
        "up",
    }
