"""Pure reducers: conditions, backoff, lost work, checkpoint interval, history, metrics."""

from __future__ import annotations

import dataclasses

from controller_fakes import CFG, at, ts
from prometheus_client import CollectorRegistry, generate_latest

from spotrun_operator import status as s
from spotrun_operator.metrics import Metrics
from spotrun_operator.plan import MetricEvent


def test_condition_transition_time_moves_only_on_change() -> None:
    conds = s.set_condition([], "Running", True, "AttemptRunning", "a", at(0), 1)
    conds = s.set_condition(conds, "Running", True, "AttemptRunning", "b", at(5), 2)
    c = s.get_condition(conds, "Running")
    assert c is not None
    assert (c["lastTransitionTime"], c["message"], c["observedGeneration"]) == (ts(0), "b", 2)
    conds = s.set_condition(conds, "Running", False, "Recovering", "c", at(9), 2)
    assert s.get_condition(conds, "Running")["lastTransitionTime"] == ts(9)  # type: ignore[index]


def test_backoff_exponential_capped_with_jitter() -> None:
    cfg = dataclasses.replace(
        CFG, backoff_base_seconds=10, backoff_max_seconds=60, backoff_jitter=0.2
    )
    assert s.backoff_seconds(0, cfg, 0.5) == 0
    assert [s.backoff_seconds(k, cfg, 0.5) for k in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    assert s.backoff_seconds(1, cfg, 0.0) == 8 and s.backoff_seconds(1, cfg, 0.999) < 12


def test_consecutive_losses_reset_after_a_long_run() -> None:
    hist = [
        {"attempt": 1, "outcome": "Preempted", "startedAt": ts(0), "endedAt": ts(4000)},
        {"attempt": 2, "outcome": "Preempted", "startedAt": ts(4100), "endedAt": ts(4200)},
        {"attempt": 3, "outcome": "Failed", "startedAt": ts(4300), "endedAt": ts(4310)},
        {"attempt": 4},
    ]
    assert s.consecutive_losses(hist, reset_seconds=1800) == 3
    assert s.consecutive_losses(hist[:1], reset_seconds=1800) == 1
    hist[1]["outcome"] = "Suspended"
    assert s.consecutive_losses(hist, reset_seconds=1800) == 1


def test_lost_work() -> None:
    entry = {"attempt": 2, "startedAt": ts(100), "endedAt": ts(1000)}
    assert s.lost_work_seconds(entry, None, ts(1000)) == 900
    assert s.lost_work_seconds(entry, {"checkpointTime": ts(700)}, ts(1000)) == 300
    assert s.lost_work_seconds(entry, {"checkpointTime": ts(50)}, ts(1000)) == 900
    assert s.lost_work_seconds({"attempt": 2}, None, ts(1000)) == 0
    # Saved inside the notice window by this attempt: nothing lost.
    done = {**entry, "lostWorkSeconds": 300}
    assert s.final_lost_work(done, {"checkpointTime": ts(1050), "attempt": 2}) == 0
    assert s.final_lost_work(done, {"checkpointTime": ts(1050), "attempt": 1}) == 300
    assert s.final_lost_work(done, {"checkpointTime": ts(700), "attempt": 2}) == 300


def test_checkpoint_interval_auto_uses_young_daly() -> None:
    assert s.checkpoint_interval_seconds("15m", [], 60) == 900
    assert s.checkpoint_interval_seconds("auto", [], 60) == 900
    hist = [
        {
            "attempt": i,
            "outcome": "Preempted",
            "startedAt": ts(i * 10000),
            "endedAt": ts(i * 10000 + 7200),
        }
        for i in range(1, 4)
    ]
    # MTBF 2 h, C = 60 s: sqrt(2 * 60 * 7200) = 929 s.
    assert s.checkpoint_interval_seconds("auto", hist, 60) == 929


def test_trim_history_keeps_cost_totals() -> None:
    hist = [
        {
            "attempt": i,
            "stoppedAt": ts(i),
            "spotUSD": 1.0,
            "onDemandUSD": 0.0,
            "onDemandEquivalentUSD": 3.0,
            "gpuHours": 2.0,
        }
        for i in range(1, 6)
    ]
    hist.append({"attempt": 6})
    kept, arch = s.trim_history(hist, {}, limit=3)
    assert [e["attempt"] for e in kept] == [4, 5, 6]
    assert arch["attempts"] == 3 and arch["spotUSD"] == 3.0 and arch["gpuHours"] == 6.0
    total = s.total_cost(kept, arch, at(0), {})
    assert total.spot_usd == 5.0


def test_entry_cost_of_a_running_attempt() -> None:
    entry = {
        "attempt": 1,
        "startedAt": ts(0),
        "nodes": 2,
        "gpus": 8,
        "instanceType": "p4d.24xlarge",
        "capacityType": "spot",
    }
    cost = s.entry_cost(entry, at(3600), {})
    assert cost.total_usd == 0 and cost.gpu_hours == 16  # unknown prices count $0
    from spotrun_operator.cost import DEFAULT_PRICES

    cost = s.entry_cost(entry, at(3600), DEFAULT_PRICES)
    assert 15 < cost.spot_usd < 30 and cost.on_demand_equivalent_usd > 60


def test_metrics_names_labels_and_per_run_cleanup() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.record(
        [
            MetricEvent(
                "preemption",
                {
                    "signal": "spot-interruption",
                    "instance_type": "p4d.24xlarge",
                    "zone": "us-east-1a",
                },
            ),
            MetricEvent("preemption", {"signal": "made-up-signal"}),
            MetricEvent("failure", {"reason": "OOMKilled"}),
            MetricEvent("recovery", {"signal": "spot-interruption"}, 42.0),
            MetricEvent("lost_work", {"signal": "spot-interruption"}, 120.0),
        ]
    )
    m.observe_run("ml", "llm", "Running", ts(0))
    m.reconcile_duration.observe(0.01)
    m.reconcile_errors.inc()
    text = generate_latest(reg).decode()
    for name in (
        "spotrun_runs",
        "spotrun_preemptions_total",
        "spotrun_failures_total",
        "spotrun_recovery_seconds",
        "spotrun_lost_work_seconds_total",
        "spotrun_checkpoint_age_seconds",
        "spotrun_reconcile_duration_seconds",
        "spotrun_reconcile_errors_total",
    ):
        assert f"# TYPE {name} " in text, name
    assert (
        'spotrun_preemptions_total{instance_type="p4d.24xlarge",'
        'signal="spot-interruption",zone="us-east-1a"} 1.0'
    ) in text
    assert 'signal="other"' in text  # unknown values never mint new series
    assert 'spotrun_runs{phase="Running"} 1.0' in text
    assert 'spotrun_checkpoint_age_seconds{namespace="ml",run="llm"}' in text
    m.observe_run("ml", "llm", None, None)
    text = generate_latest(reg).decode()
    assert 'run="llm"' not in text and 'spotrun_runs{phase="Running"} 0.0' in text


def test_metrics_never_register_globally() -> None:
    Metrics(CollectorRegistry())
    Metrics(CollectorRegistry())  # a second instance would collide on a global registry
