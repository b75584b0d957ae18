"""Helpers of the chart, dashboard and alert tests: paths, the agreed metric names, helm,
promtool, and a small PromQL scanner that lists the metric names an expression selects."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "spotrun"
CHART_FILES = CHART_DIR / "files"
CRD_SOURCE = REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
DASHBOARDS_DIR = REPO_ROOT / "dashboards"
ALERTS_FILE = REPO_ROOT / "alerts" / "spotrun.rules.yaml"
ALERT_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"
ALL_FEATURES_VALUES = Path(__file__).resolve().parent / "values" / "all-features.yaml"
SYNC_SCRIPT = REPO_ROOT / "hack" / "sync-chart-crds.sh"
HELM = REPO_ROOT / ".cache" / "bin" / "helm"
PROMTOOL = Path("/usr/bin/promtool")

# The metric names the chart's alerts and dashboards read: the operator and trainer export them.
OPERATOR_METRICS = {
    "spotrun_runs",
    "spotrun_preemptions_total",
    "spotrun_failures_total",
    "spotrun_recovery_seconds",  # histogram
    "spotrun_lost_work_seconds_total",
    "spotrun_checkpoint_age_seconds",
    "spotrun_run_cost_usd",
    "spotrun_run_savings_ratio",
    "spotrun_budget_used_ratio",
    "spotrun_checkpoint_interval_seconds",
    "spotrun_reconcile_duration_seconds",  # histogram
    "spotrun_reconcile_errors_total",
}
TRAINER_METRICS = {
    "spotrun_trainer_step",
    "spotrun_trainer_loss",
    "spotrun_trainer_samples_per_second",
    "spotrun_trainer_checkpoint_seconds",  # histogram
    "spotrun_trainer_checkpoint_bytes",
    "spotrun_trainer_last_checkpoint_timestamp_seconds",
}
HISTOGRAMS = {
    "spotrun_recovery_seconds",
    "spotrun_reconcile_duration_seconds",
    "spotrun_trainer_checkpoint_seconds",
}
# Series Prometheus itself writes.
STANDARD_METRICS = {"up"}


def allowed_series() -> set[str]:
    """Every series name a dashboard or alert may select."""
    names = set(OPERATOR_METRICS | TRAINER_METRICS | STANDARD_METRICS)
    for h in HISTOGRAMS:
        names.discard(h)  # a histogram is only ever selected through its series
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


# ------------------------------------------------------------------------------ PromQL scan
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![0-9.\w:])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (not a parser: run promtool for that)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _GROUPING.sub(" ", text)  # "sum by (x) (y)" -> "sum  (y)": sum is a call
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue  # a keyword or a function call
        names.add(word)
    return names


# ------------------------------------------------------------------------ Grafana variables
# Stand-ins for Grafana's built-in and dashboard variables, so exprs become plain PromQL.
GRAFANA_VARIABLES = {
    "__range": "1d",
    "__range_s": "86400",
    "__range_ms": "86400000",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "namespace": "ml-team",
    "run": "llama-ft",
}
_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute_variables(expr: str, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """Replace $var, ${var} and [[var]]; an unknown variable raises KeyError."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return variables[name]

    return _VAR.sub(repl, expr)


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    where: str  # panel title + refId, or the variable's name
    expr: str  # with Grafana variables substituted


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


def load_dashboards() -> dict[str, dict[str, Any]]:
    """dashboards/*.json by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def iter_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_queries(name: str, dashboard: dict[str, Any]) -> list[PanelQuery]:
    """The PromQL of every panel target and of every query variable (label_values' selector)."""
    out: list[PanelQuery] = []
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target['refId']}"
            out.append(PanelQuery(name, where, substitute_variables(target["expr"])))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        if not m:
            raise AssertionError(f"{name}: variable {var['name']}: unsupported query {query!r}")
        out.append(PanelQuery(name, f"variable {var['name']}", substitute_variables(m.group(1))))
    return out


# ----------------------------------------------------------------------------- tools
def run(cmd: list[str], *, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output (never raises on a non-zero exit)."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def promtool_check_rules(groups: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a temporary file holding ``groups``."""
    with tempfile.TemporaryDirectory(prefix="spotrun-rules-") as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        return run([str(PROMTOOL), "check", "rules", str(path)])


def helm_template(
    *args: str, values: Mapping[str, Any] | None = None, release: str = "spotrun"
) -> subprocess.CompletedProcess[str]:
    """`helm template <release> charts/spotrun -n spotrun-system <args>` (+ a values file)."""
    cmd = [str(HELM), "template", release, str(CHART_DIR), "-n", "spotrun-system", *args]
    if values is None:
        return run(cmd)
    with tempfile.TemporaryDirectory(prefix="spotrun-values-") as tmp:
        path = Path(tmp) / "values.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        return run([*cmd, "-f", str(path)])


def render(*args: str, values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rendered manifests; fails the test with helm's message when rendering fails."""
    result = helm_template(*args, values=values)
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Manifests of a kind (and name)."""
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single manifest of a kind (and name)."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]
