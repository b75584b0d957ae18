"""The dashboards and alert rules against a real Prometheus scraping a real operator
through a spot preemption.

Prometheus (hack/spotrun_dev/prometheus.py, on loopback, 1 s scrapes) scrapes
``spotrun-operator`` as job="spotrun-operator" and, as job="spotrun-trainer", one
trainer-like target per attempt: the trainer's own ``TrainerMetrics`` on a local registry,
labelled namespace/run/attempt as the chart's PodMonitor relabels rank 0. It loads
alerts/spotrun.rules.yaml. The scenario: a run with a budget, gang Running, progress and a
checkpoint reported through status.progress, an NTH spot interruption, attempt 2 Running
with a new checkpoint, Succeeded, deleted; then the operator stops.

Every dashboard query (as the range query a Grafana panel runs over the scenario) and every
alert expression must return data, except those in EXPECTED_EMPTY, which say why.
"""

from __future__ import annotations

import math
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client
from observe_helpers import (
    ALERTS_FILE,
    dashboard_and_alert_queries,
    finite_values,
    has_data,
)
from prometheus_client import CollectorRegistry
from scenarios import report_progress

from controller_helpers import (
    TR,
    complete_all,
    create,
    running_gang,
    training_run,
    wait_status,
)
from controller_process import Operator
from spotrun_dev import inject
from spotrun_dev.cluster import LocalCluster
from spotrun_dev.prometheus import Prometheus, Targets, free_port
from spotrun_operator.common import fmt_time, utcnow
from spotrun_trainer.contract import Progress
from spotrun_trainer.metrics import TrainerMetrics

PROMTOOL = Path("/usr/bin/promtool")
RUN = "llm"
# Queries with no data in this scenario, and why. The test fails if any other query is
# empty, and if any of these is not.
EXPECTED_EMPTY = {
    "alerts: SpotrunCheckpointStale": "checkpoints are minutes old, the interval is 5m",
    "alerts: SpotrunPreemptionStorm": "one preemption, not five in a zone",
    "alerts: SpotrunBudgetNearlySpent": "cents spent of a $1000 budget",
    "alerts: SpotrunOperatorAbsent": "the operator job is scraped throughout",
    "alerts: SpotrunReconcileErrors": "no reconcile fails",
}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


def _trainer_target(port: int, namespace: str, attempt: int) -> dict[str, Any]:
    """A static target group labelled as the PodMonitor relabels the master pod."""
    labels = {"namespace": namespace, "run": RUN, "attempt": str(attempt)}
    return {"targets": [f"127.0.0.1:{port}"], "labels": labels}


def _checkpoint(
    custom: client.CustomObjectsApi,
    namespace: str,
    trainer: TrainerMetrics,
    attempt: int,
    step: int,
) -> None:
    """What rank 0 does after committing step-<step>: metrics, then status.progress."""
    now = utcnow()
    trainer.step.set(step)
    trainer.loss.set(2.0 - step / 1000)
    trainer.samples_per_second.set(480.0 + attempt)
    trainer.observe_checkpoint(4.2, 3_500_000_000, now.timestamp())
    report_progress(
        custom,
        namespace,
        RUN,
        Progress(
            step=step,
            checkpoint_step=step,
            checkpoint_time=fmt_time(now),
            checkpoint_path=f"/checkpoints/step-{step}",
            samples_per_second=480.0 + attempt,
            attempt=attempt,
        ),
    )


def test_every_dashboard_query_and_alert_on_a_real_prometheus(
    cluster: LocalCluster,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    crd: dict[str, Any],
    operator_log: list[Any],
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    op = Operator(
        cluster.kubeconfig,
        namespace,
        tmp_path / "operator.log",
        (f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1"),
    )
    operator_log.append(op.start())
    trainers = {1: TrainerMetrics(CollectorRegistry()), 2: TrainerMetrics(CollectorRegistry())}
    ports = {1: trainers[1].serve(0, "127.0.0.1"), 2: free_port()}  # 2 listens once it runs
    jobs: dict[str, Targets] = {
        "spotrun-operator": [f"127.0.0.1:{metrics_port}"],
        "spotrun-trainer": [_trainer_target(ports[n], namespace, n) for n in (1, 2)],
    }
    sel = f'namespace="{namespace}", run="{RUN}"'
    try:
        with Prometheus.start(jobs, rule_files=[ALERTS_FILE]) as prom:
            prom.wait_for('up{job="spotrun-operator"} == 1', timeout=60)
            prom.wait_for('up{job="spotrun-trainer", attempt="1"} == 1', timeout=30)
            start = time.time()

            # Attempt 1 runs and checkpoints.
            create(custom, namespace, training_run(RUN, budget={"maxUSD": 1000}))
            gang = running_gang(core, namespace, RUN, 1)
            wait_status(custom, namespace, RUN, "Running", lambda s: s.get("phase") == "Running")
            _checkpoint(custom, namespace, trainers[1], 1, 100)
            prom.wait_for(f"spotrun_checkpoint_age_seconds{{{sel}}}", timeout=30)
            prom.wait_for(f"spotrun_run_savings_ratio{{{sel}}} > 0.5", timeout=30)
            prom.wait_for(f'spotrun_trainer_step{{{sel}, attempt="1"}} == 100', timeout=30)
            prom.wait_for("spotrun_preemptions_total", timeout=30)  # zero series of the zones
            trainers[1].step.set(150)

            # An NTH spot interruption notice on one node of the gang.
            inject.interrupt(core, gang[1].spec.node_name, "nth")
            gang = running_gang(core, namespace, RUN, 2)
            trainers[1].close()  # its pod is gone
            st = wait_status(
                custom,
                namespace,
                RUN,
                "attempt 2 Running",
                lambda s: s.get("phase") == "Running" and s.get("attempt") == 2,
            )
            assert (st["preemptions"], st["failures"]) == (1, 0)
            trainers[2].step.set(100)  # resumed from step-100
            assert trainers[2].serve(ports[2], "127.0.0.1") == ports[2]
            prom.wait_for('up{job="spotrun-trainer", attempt="2"} == 1', timeout=30)
            _checkpoint(custom, namespace, trainers[2], 2, 200)
            prom.wait_for(f'spotrun_trainer_step{{{sel}, attempt="2"}} == 200', timeout=30)
            prom.wait_for('spotrun_recovery_seconds_count{signal="spot-interruption"} == 1')
            prom.wait_for("sum(increase(spotrun_preemptions_total[10m])) > 0.5", timeout=30)

            # The operator's exposition passes promtool's checks.
            exposition = _scrape(metrics_port)
            check = subprocess.run(
                [str(PROMTOOL), "check", "metrics"],
                input=exposition,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
            for name in (
                "spotrun_run_cost_usd",
                "spotrun_run_savings_ratio",
                "spotrun_budget_used_ratio",
                "spotrun_checkpoint_interval_seconds",
            ):
                assert f"\n{name}{{" in exposition, name

            # Succeeded: nothing checkpoints any more, the spend stays until deletion.
            complete_all(core, namespace, gang)
            wait_status(
                custom, namespace, RUN, "Succeeded", lambda s: s.get("phase") == "Succeeded"
            )
            trainers[2].close()
            prom.wait_for(f"spotrun_checkpoint_age_seconds{{{sel}}}", lambda s: not s)
            prom.wait_for(f"spotrun_checkpoint_interval_seconds{{{sel}}}", lambda s: not s)
            assert prom.query(f"spotrun_run_cost_usd{{{sel}}}")
            custom.delete_namespaced_custom_object(TR[0], TR[1], namespace, TR[2], RUN)
            prom.wait_for(f"spotrun_run_cost_usd{{{sel}}}", lambda s: not s, timeout=60)
            prom.wait_for(f"spotrun_budget_used_ratio{{{sel}}}", lambda s: not s)

            # The operator goes away: SpotrunOperatorDown's expression holds, and the rule
            # engine has the alert pending (for: 5m).
            op.stop()
            prom.wait_for('up{job="spotrun-operator"} == 0', timeout=30)
            prom.wait_for('ALERTS{alertname="SpotrunOperatorDown", alertstate="pending"}')
            # Range queries step 1 s from `start`: the last step must not fall before now.
            end = start + math.ceil(time.time() - start)

            rules = prom.rules()
            bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
            assert not bad, f"rules that fail to evaluate: {bad}"
            loaded = sorted(r["name"] for r in rules)
            variables = {
                "namespace": namespace,
                "run": RUN,
                "__range": f"{int(end - start) + 60}s",
                "__range_s": str(int(end - start) + 60),
                "__range_ms": str((int(end - start) + 60) * 1000),
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
            # Every checkpoint in this scenario is younger than the scenario.
            too_old = {k: v for k, v in ages.items() if v is None or v > end - start + 60}
            assert not too_old, f"checkpoint ages beyond the scenario: {too_old}"
            assert sorted(empty) == sorted(EXPECTED_EMPTY), (
                f"queries without data: {sorted(empty)}; expected {sorted(EXPECTED_EMPTY)}"
            )
            # The first preemption and the recovery are counted (series start at 0).
            fleet_q = {q.name: q for q in queries if q.source == "spotrun-fleet.json"}
            by_type = prom.query_range(
                fleet_q["Preemptions by instance type (time range) [A]"].expr, start, end, 1
            )
            assert max(v for _, v in finite_values(by_type)) >= 0.9
            p50 = prom.query_range(
                fleet_q["Recovery time p50 (time range) [A]"].expr, start, end, 1
            )
            assert max(v for _, v in finite_values(p50)) > 0
    finally:
        for t in trainers.values():
            t.close()


def test_alert_rules_pass_promtool() -> None:
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
