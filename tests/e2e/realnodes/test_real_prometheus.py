"""The dashboards and the alert rules on a real Prometheus scraping the real operator pod
and the real trainer through a real spot interruption.

Prometheus (hack/spotrun_dev/prometheus.py, on this machine, 1 s scrapes) scrapes what the
chart's ServiceMonitor and PodMonitor select: the operator pod's /metrics as
job="spotrun-operator", and rank 0 (the master pod) of each attempt on the trainer's
metrics port as job="spotrun-trainer", labelled namespace/run/attempt as the PodMonitor
relabels it. The targets follow the pods, as service discovery does (pod IPs are routed to
the real nodes). The run: 2 real nodes of the trainer image with a budget; an NTH spot
interruption (taint, cordon, drain through the Eviction API, then the instance dies);
attempt 2 resumes from the checkpoint its ranks saved and succeeds; the run is deleted;
the operator is scaled to 0.

Every dashboard query (as the range query a Grafana panel runs over the scenario) and every
alert expression must return data, except those in EXPECTED_EMPTY, which say why. Nothing
here writes a metric or status.progress: the trainer and the operator do.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from dashboard_check import check_every_query, scenario_end
from kubernetes import client
from observe_helpers import ALERTS_FILE

from kubectl_helpers import cells, kubectl
from spotrun_api import contract
from spotrun_dev import chart_install, images, paths
from spotrun_dev.node_config import RealNode
from spotrun_dev.prometheus import Prometheus, Targets
from spotrun_dev.real_story import TR, TRAINER_ARGS, Story, trainer_run
from spotrun_dev.waiting import wait_for

PROMTOOL = Path("/usr/bin/promtool")
RUN = "run"  # the name the story drives
OPERATOR_METRICS_PORT = 8000  # the chart's operator.metricsPort
MASTER = "training.kubeflow.org/replica-type=master"
# A short run: the interruption comes at step 40 of 160 (about 0.2 s a step).
ARGS = (*(a for a in TRAINER_ARGS if not a.startswith("--max-steps=")), "--max-steps=160")
# Queries with no data in this scenario, and why. The test fails if any other query is
# empty, and if any of these is not. (SpotrunCheckpointStale has data: checkpoints every
# 3 s, and a recovery on real pods takes longer than two of those.)
EXPECTED_EMPTY = {
    "alerts: SpotrunPreemptionStorm": "one preemption, not five in a zone",
    "alerts: SpotrunBudgetNearlySpent": "cents spent of a $1000 budget",
    "alerts: SpotrunOperatorAbsent": "the operator job is scraped throughout",
    "alerts: SpotrunReconcileErrors": "no reconcile fails",
}


class PodTargets:
    """Keeps Prometheus scraping the operator pod and each live attempt's master pod."""

    def __init__(
        self, core: client.CoreV1Api, namespace: str, release: chart_install.Release
    ) -> None:
        self.core, self.namespace, self.release = core, namespace, release
        self.operator: str | None = None  # kept once seen: a scaled-down operator is down
        self.current: dict[str, Targets] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def jobs(self) -> dict[str, Targets]:
        pod = self.release.pod(self.core)
        if pod is not None and pod.status.pod_ip and pod.status.phase == "Running":
            self.operator = f"{pod.status.pod_ip}:{OPERATOR_METRICS_PORT}"
        masters = self.core.list_namespaced_pod(self.namespace, label_selector=MASTER).items
        trainers: list[dict[str, Any]] = [
            {
                "targets": [f"{p.status.pod_ip}:{contract.DEFAULT_METRICS_PORT}"],
                "labels": {
                    "namespace": self.namespace,
                    "run": p.metadata.labels["spotrun.dev/run"],
                    "attempt": p.metadata.labels["spotrun.dev/attempt"],
                },
            }
            for p in masters
            if p.status.phase == "Running" and p.status.pod_ip
        ]
        return {
            "spotrun-operator": [self.operator] if self.operator else [],
            "spotrun-trainer": trainers,
        }

    def follow(self, prom: Prometheus) -> PodTargets:
        def loop() -> None:
            try:
                while not self._stop.is_set():
                    jobs = self.jobs()
                    if jobs != self.current:
                        prom.retarget(jobs)
                        self.current = jobs
                    self._stop.wait(0.5)
            except BaseException as exc:  # reported by __exit__
                self.error = exc

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> PodTargets:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.error is not None and exc is None:
            raise AssertionError(f"following the pods failed: {self.error!r}")


def _promtool_check_metrics(address: str) -> None:
    """The operator's exposition passes promtool's checks."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        exposition = resp.read().decode()
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


def _kubectl_tells_the_story(namespace: str, run: dict[str, Any]) -> None:
    """``kubectl get tr`` and ``kubectl spotrun describe`` on what the real operator and the
    real trainer wrote: one preemption by a spot interruption, then success."""
    (row,) = cells(kubectl(paths.KUBECONFIG, "get", "tr", "-n", namespace))
    assert (row["NAME"], row["PHASE"], row["ATTEMPT"]) == (RUN, "Succeeded", "2"), row
    assert (row["PREEMPTIONS"], row["FAILURES"]) == ("1", "0"), row
    progress = run["progress"]
    assert int(progress["checkpointStep"]) > 0, progress
    assert (row["STEP"], row["CHECKPOINT"]) == (
        str(progress["step"]),
        str(progress["checkpointStep"]),
    ), row
    assert row["LAST"] == run["display"]["last"] and "spot-interruption" in row["LAST"], row
    text = kubectl(paths.KUBECONFIG, "spotrun", "-n", namespace, "describe", RUN)
    lines = text.splitlines()
    assert "Phase:        Succeeded" in lines, text
    start = next(i for i, x in enumerate(lines) if x.startswith("ATTEMPT"))
    table = cells("\n".join(lines[start:]))
    assert [r["ATTEMPT"] for r in table] == ["1", "2"], text
    assert (table[0]["OUTCOME"], table[0]["SIGNAL"]) == ("Preempted", "spot-interruption"), text
    assert table[1]["OUTCOME"] == run["attempts"][1]["outcome"], text


def _scale_operator_to_zero(api_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api_client)
    (deployment,) = apps.list_namespaced_deployment(namespace).items
    apps.patch_namespaced_deployment_scale(
        deployment.metadata.name, namespace, {"spec": {"replicas": 0}}
    )


def test_every_dashboard_query_and_alert_on_the_real_pods(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    story = Story(api_client, namespace, len(real_nodes))
    sel = f'namespace="{namespace}", run="{RUN}"'
    body = trainer_run(RUN, built_images["trainer"].ref, "ckpt", ARGS)
    body["spec"]["budget"] = {"maxUSD": 1000}
    targets = PodTargets(core, namespace, operator_release)
    with Prometheus.start({}, rule_files=[ALERTS_FILE]) as prom, targets.follow(prom):
        prom.wait_for('up{job="spotrun-operator"} == 1', timeout=60)
        start = time.time()

        # Attempt 1 trains and checkpoints; its rank 0 is scraped.
        story.custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body)
        story.wait_training(RUN, 1, 20)
        prom.wait_for(f'spotrun_trainer_step{{{sel}, attempt="1"}} > 0', timeout=60)
        prom.wait_for(f"spotrun_checkpoint_age_seconds{{{sel}}}", timeout=60)
        prom.wait_for(f"spotrun_run_savings_ratio{{{sel}}} > 0.5", timeout=60)
        prom.wait_for("spotrun_preemptions_total", timeout=30)  # zero series of the zones

        # An NTH spot interruption on one node of the gang: every rank saves and exits,
        # attempt 2 resumes from that checkpoint on the other nodes.
        nth = story.interrupt(1, "nth", 40)
        assert nth.recorded_signal == "spot-interruption" and nth.lost_steps == 0, nth
        prom.wait_for(f'spotrun_trainer_step{{{sel}, attempt="2"}} > 0', timeout=120)
        prom.wait_for('spotrun_recovery_seconds_count{signal="spot-interruption"} == 1')
        prom.wait_for("sum(increase(spotrun_preemptions_total[10m])) > 0.5", timeout=30)
        assert targets.operator is not None
        _promtool_check_metrics(targets.operator)

        # Succeeded: nothing checkpoints any more, the spend stays until deletion.
        run = story.finish()
        assert run.get("phase") == "Succeeded", run
        assert (int(run["preemptions"]), int(run.get("failures", 0))) == (1, 0), run
        _kubectl_tells_the_story(namespace, run)
        prom.wait_for(f"spotrun_checkpoint_age_seconds{{{sel}}}", lambda s: not s)
        prom.wait_for(f"spotrun_checkpoint_interval_seconds{{{sel}}}", lambda s: not s)
        assert prom.query(f"spotrun_run_cost_usd{{{sel}}}")
        story.custom.delete_namespaced_custom_object(*TR[:2], namespace, TR[2], RUN)
        prom.wait_for(f"spotrun_run_cost_usd{{{sel}}}", lambda s: not s, timeout=60)
        prom.wait_for(f"spotrun_budget_used_ratio{{{sel}}}", lambda s: not s)

        # The operator goes away: SpotrunOperatorDown's expression holds, and the rule
        # engine has the alert pending (for: 5m).
        _scale_operator_to_zero(api_client, namespace)
        wait_for("the operator pod gone", lambda: operator_release.pod(core) is None, 120)
        prom.wait_for('up{job="spotrun-operator"} == 0', timeout=60)
        prom.wait_for('ALERTS{alertname="SpotrunOperatorDown", alertstate="pending"}')
        end = scenario_end(start)
        check_every_query(prom, namespace, RUN, start, end, EXPECTED_EMPTY)
