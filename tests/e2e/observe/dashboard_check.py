"""Every Grafana panel query and alert expression, run as range queries over a scenario on a
real Prometheus: each must return data, except those a scenario names (and says why)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from observe_helpers import dashboard_and_alert_queries, finite_values, has_data

from spotrun_dev.prometheus import Prometheus


def scenario_end(start: float) -> float:
    """Range queries step 1 s from ``start``: the last step must not fall before now."""
    return start + math.ceil(time.time() - start)


def check_every_query(
    prom: Prometheus,
    namespace: str,
    run: str,
    start: float,
    end: float,
    expected_empty: Mapping[str, str],
) -> None:
    """Rules healthy and all loaded; every query has data but ``expected_empty``; checkpoint
    ages within the scenario; the preemption and the recovery counted on the fleet board."""
    rules = prom.rules()
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, f"rules that fail to evaluate: {bad}"
    loaded = sorted(r["name"] for r in rules)
    span = int(end - start) + 60
    variables = {
        "namespace": namespace,
        "run": run,
        "__range": f"{span}s",
        "__range_s": str(span),
        "__range_ms": str(span * 1000),
        "__rate_interval": "15s",
        "__interval": "1s",
        "__interval_ms": "1000",
    }
    queries = dashboard_and_alert_queries(variables)
    assert sorted(q.name for q in queries if q.source == "alerts") == loaded
    empty, report, ages = [], [], {}
    for q in queries:
        result = prom.query_range(q.expr, start, end, 1)
        values = [v for _, v in finite_values(result)]
        top = max(values) if values else None
        report.append(f"{q.key}: {len(result)} series, max {top}")
        if not has_data(result):
            empty.append(q.key)
        if "heckpoint age" in q.name or "Oldest checkpoints" in q.name:
            ages[q.key] = top
    print("\n" + "\n".join(report))
    # Every checkpoint in the scenario is younger than the scenario.
    too_old = {k: v for k, v in ages.items() if v is None or v > span}
    assert not too_old, f"checkpoint ages beyond the scenario: {too_old}"
    assert sorted(empty) == sorted(expected_empty), (
        f"queries without data: {sorted(empty)}; expected {sorted(expected_empty)}"
    )
    # The first preemption and the recovery are counted (series start at 0).
    fleet = {q.name: q for q in queries if q.source == "spotrun-fleet.json"}
    by_type = prom.query_range(
        fleet["Preemptions by instance type (time range) [A]"].expr, start, end, 1
    )
    assert max(v for _, v in finite_values(by_type)) >= 0.9
    p50 = prom.query_range(fleet["Recovery time p50 (time range) [A]"].expr, start, end, 1)
    assert max(v for _, v in finite_values(p50)) > 0
