"""hack/spotrun_dev/prometheus.py starts a real Prometheus that scrapes a real target."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from spotrun_dev.prometheus import Prometheus, PrometheusError, render_config


def test_scrapes_a_prometheus_client_target(prometheus_bin: Path) -> None:
    registry = CollectorRegistry()
    step = Gauge("spotrun_trainer_step", "Optimizer steps done.", registry=registry)
    step.set(42)
    errors = Counter("spotrun_reconcile_errors", "Failed reconciles.", registry=registry)
    errors.inc(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        target = f"127.0.0.1:{server.server_port}"
        with Prometheus.start({"spotrun-trainer": [target]}, binary=prometheus_bin) as prom:
            samples = prom.wait_for(
                "spotrun_trainer_step", lambda s: any(x.value == 42 for x in s), timeout=30
            )
            assert samples[0].labels == {
                "__name__": "spotrun_trainer_step",
                "instance": target,
                "job": "spotrun-trainer",
            }
            up = prom.wait_for('up{job="spotrun-trainer"}', lambda s: bool(s), timeout=10)
            assert up[0].value == 1
            step.set(43)
            prom.wait_for("spotrun_trainer_step", lambda s: any(x.value == 43 for x in s))
            assert prom.query("spotrun_reconcile_errors_total")[0].value == 3
            (scalar,) = prom.query("scalar(vector(7))")
            assert (scalar.labels, scalar.value) == ({}, 7.0)
            with pytest.raises(PrometheusError, match="bad_data"):
                prom.query("sum(")
            process = prom.process
        assert process.poll() is not None, "Prometheus still runs after the with block"
        assert not prom.workdir.exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_reports_a_prometheus_that_cannot_start(prometheus_bin: Path, tmp_path: Path) -> None:
    rules = tmp_path / "bad.rules.yaml"
    rules.write_text("groups: [{name: x, rules: [{record: r, expr: 'sum('}]}]\n")
    with pytest.raises(PrometheusError, match="exited"):
        Prometheus.start({}, binary=prometheus_bin, rule_files=[rules], ready_timeout=30)


def test_config_scrapes_every_second() -> None:
    config = render_config({"a": ["127.0.0.1:1"]}, rule_files=[Path("/x.yaml")])
    assert "scrape_interval: 1s" in config and "scrape_timeout: 1s" in config
    assert "- 127.0.0.1:1" in config and "- /x.yaml" in config


def test_target_labels_range_queries_and_rules(prometheus_bin: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    Gauge("spotrun_trainer_step", "Optimizer steps done.", registry=registry).set(7)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "groups: [{name: g, rules: [{alert: StepLow, expr: 'spotrun_trainer_step < 10'}]}]\n"
    )
    try:
        target = f"127.0.0.1:{server.server_port}"
        group = {"targets": [target], "labels": {"namespace": "ml", "run": "llm"}}
        with Prometheus.start(
            {"spotrun-trainer": [group]}, binary=prometheus_bin, rule_files=[rules]
        ) as prom:
            (sample,) = prom.wait_for("spotrun_trainer_step", bool, timeout=30)
            assert (sample.labels["namespace"], sample.labels["run"]) == ("ml", "llm")
            (series,) = prom.query_range(
                "spotrun_trainer_step", sample.timestamp - 5, sample.timestamp + 1, 1
            )
            assert series.labels["run"] == "llm" and series.values[-1][1] == 7
            (rule,) = prom.rules()
            assert (rule["name"], rule["health"]) == ("StepLow", "ok")
            alerts = prom.wait_for("ALERTS", bool, timeout=30)
            assert alerts[0].labels["alertname"] == "StepLow"
            assert prom.alerts()[0]["labels"]["run"] == "llm"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_retarget_follows_targets_that_come_and_go(prometheus_bin: Path) -> None:
    """Pods come and go: a reload scrapes the new target with its labels, not the old one."""
    servers = []
    for attempt in (1, 2):
        registry = CollectorRegistry()
        Gauge("spotrun_trainer_step", "Steps.", registry=registry).set(100 * attempt)
        servers.append(start_http_server(0, addr="127.0.0.1", registry=registry)[0])
    first, second = (f"127.0.0.1:{s.server_port}" for s in servers)
    try:
        jobs = {"spotrun-trainer": [{"targets": [first], "labels": {"attempt": "1"}}]}
        with Prometheus.start(jobs, binary=prometheus_bin) as prom:
            prom.wait_for('spotrun_trainer_step{attempt="1"} == 100', timeout=30)
            prom.retarget({"spotrun-trainer": [{"targets": [second], "labels": {"attempt": "2"}}]})
            assert {t["discoveredLabels"]["__address__"] for t in prom.targets()} == {second}
            prom.wait_for('spotrun_trainer_step{attempt="2"} == 200', timeout=30)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
