"""dashboards/*.json: Grafana dashboards whose every query parses (promtool) and selects
only agreed metric names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chartkit import (
    PanelQuery,
    allowed_series,
    dashboard_queries,
    iter_panels,
    load_dashboards,
    metric_names,
    promtool_check_rules,
)

DASHBOARDS = load_dashboards()
QUERIES = [q for name, d in DASHBOARDS.items() for q in dashboard_queries(name, d)]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_both_dashboards_exist() -> None:
    assert sorted(DASHBOARDS) == ["spotrun-fleet.json", "spotrun-run.json"]
    assert {d["uid"] for d in DASHBOARDS.values()} == {"spotrun-fleet", "spotrun-run"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_datasource_is_a_template_variable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_layout_is_sound(name: str) -> None:
    panels = list(iter_panels(DASHBOARDS[name]["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))


def test_run_dashboard_is_about_one_run() -> None:
    dashboard = DASHBOARDS["spotrun-run.json"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"namespace", "run"} <= variables
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            for selector in re.findall(r"\{[^}]*\}", target["expr"]):
                assert 'namespace="$namespace"' in selector, panel["title"]
                assert 'run="$run"' in selector, panel["title"]


def test_fleet_dashboard_covers_the_brief() -> None:
    exprs = " ".join(q.expr for q in QUERIES if q.dashboard == "spotrun-fleet.json")
    for needle in (
        "sum by (phase) (spotrun_runs)",
        "sum by (signal) (increase(spotrun_preemptions_total",
        "sum by (zone) (increase(spotrun_preemptions_total",
        "histogram_quantile(0.5, sum by (le) (increase(spotrun_recovery_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (increase(spotrun_recovery_seconds_bucket",
        "spotrun_lost_work_seconds_total",
        "spotrun_run_cost_usd",
        "spotrun_run_savings_ratio",
    ):
        assert needle in exprs, needle


def test_every_query_parses(promtool: Path) -> None:
    # promtool parses every expr of a recording rule: one rule per panel query.
    rules: list[dict[str, Any]] = []
    index: dict[str, PanelQuery] = {}
    for i, query in enumerate(QUERIES):
        record = f"dashboard:query_{i}"
        index[record] = query
        rules.append({"record": record, "expr": query.expr})
    result = promtool_check_rules([{"name": "dashboards", "rules": rules}])
    if result.returncode != 0:
        bad = [f"{q.dashboard} {q.where}: {q.expr}" for r, q in index.items() if r in result.stdout]
        pytest.fail(f"{result.stdout}{result.stderr}\n" + "\n".join(bad))
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.where}")
def test_query_selects_only_agreed_metrics(query: PanelQuery) -> None:
    names = metric_names(query.expr)
    assert names, f"{query.where} selects no metric: {query.expr}"
    assert names <= allowed_series(), f"unknown metric names {sorted(names - allowed_series())}"
