"""Pure reducers: conditions, backoff, lost work, checkpoint interval, history, metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

from controller_fakes import CFG, at, gang, job, observed, ts
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel

from spotrun_api.base import to_json
from spotrun_api.contract import DEFAULT_CHECKPOINT_INTERVAL_SECONDS
from spotrun_api.status import Attempt, Progress
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts import pools
from spotrun_operator.model import reducers as s
from spotrun_operator.model.plan import Decision, MetricEvent, RunGauges
from spotrun_operator.money.cost import DEFAULT_PRICES
from spotrun_operator.telemetry.metrics import SIGNALS, Metrics


def _json(model: BaseModel | None) -> dict[str, Any] | None:
    return to_json(model) if model is not None else None


def _attempts(raw: list[dict[str, Any]]) -> list[Attempt]:
    return [Attempt.model_validate(e) for e in raw]


def _progress(raw: dict[str, Any]) -> Progress | None:
    return Progress.from_status(raw)


def _attempts_json(history: list[Attempt]) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in history]


def _interval(interval: str, history: list[Attempt], checkpoint_cost_seconds: float) -> int:
    """``interval: auto`` from the run's own history only (no pool knowledge, no measured
    stall): :func:`pools.auto_interval` with an empty tally."""
    return pools.auto_interval(
        interval,
        history=history,
        planned=(),
        tally={},
        stall_seconds=None,
        checkpoint_cost_seconds=checkpoint_cost_seconds,
        default=DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
    )


def test_condition_transition_time_moves_only_on_change() -> None:
    conds = s.set_condition([], "Running", True, "AttemptRunning", "a", at(0), 1)
    conds = s.set_condition(conds, "Running", True, "AttemptRunning", "b", at(5), 2)
    c = _json(s.get_condition(conds, "Running"))
    assert c is not None
    assert (c["lastTransitionTime"], c["message"], c["observedGeneration"]) == (ts(0), "b", 2)
    conds = s.set_condition(conds, "Running", False, "Recovering", "c", at(9), 2)
    assert _json(s.get_condition(conds, "Running"))["lastTransitionTime"] == ts(9)  # type: ignore[index]


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
    assert s.consecutive_losses(_attempts(hist), reset_seconds=1800) == 3
    assert s.consecutive_losses(_attempts(hist[:1]), reset_seconds=1800) == 1
    hist[1]["outcome"] = "Suspended"
    assert s.consecutive_losses(_attempts(hist), reset_seconds=1800) == 1


def test_lost_work() -> None:
    raw = {"attempt": 2, "startedAt": ts(100), "endedAt": ts(1000)}
    entry = Attempt.model_validate(raw)
    assert s.lost_work_seconds(entry, None, ts(1000)) == 900
    assert s.lost_work_seconds(entry, _progress({"checkpointTime": ts(700)}), ts(1000)) == 300
    assert s.lost_work_seconds(entry, _progress({"checkpointTime": ts(50)}), ts(1000)) == 900
    assert s.lost_work_seconds(Attempt(attempt=2), None, ts(1000)) == 0
    # Saved inside the notice window by this attempt: nothing lost.
    done = Attempt.model_validate({**raw, "lostWorkSeconds": 300})
    assert s.final_lost_work(done, _progress({"checkpointTime": ts(1050), "attempt": 2})) == 0
    assert s.final_lost_work(done, _progress({"checkpointTime": ts(1050), "attempt": 1})) == 300
    assert s.final_lost_work(done, _progress({"checkpointTime": ts(700), "attempt": 2})) == 300


def test_checkpoint_interval_auto_uses_young_daly() -> None:
    assert _interval("15m", [], 60) == 900
    assert _interval("auto", [], 60) == 900
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
    assert _interval("auto", _attempts(hist), 60) == 929


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
    kept_attempts, archived = s.trim_history(_attempts(hist), None, limit=3)
    kept, arch = _attempts_json(kept_attempts), _json(archived) or {}
    assert [e["attempt"] for e in kept] == [4, 5, 6]
    assert arch["attempts"] == 3 and arch["spotUSD"] == 3.0 and arch["gpuHours"] == 6.0
    total = s.total_cost(kept_attempts, archived, at(0), {})
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
    cost = s.entry_cost(Attempt.model_validate(entry), at(3600), {})
    assert cost.total_usd == 0 and cost.gpu_hours == 16  # unknown prices count $0
    from spotrun_operator.money.cost import DEFAULT_PRICES

    cost = s.entry_cost(Attempt.model_validate(entry), at(3600), DEFAULT_PRICES)
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
    m.reconcile_duration.labels(result="acted").observe(0.01)
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


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def _series(reg: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for family in reg.collect()
        for sample in family.samples
        if sample.name == name
    ]


def test_per_run_gauges_and_their_cleanup() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    g = RunGauges(
        spot_usd=12.5,
        on_demand_usd=2.0,
        savings_ratio=0.6,
        budget_used_ratio=0.145,
        checkpoint_interval_seconds=900,
    )
    m.observe_run("ml", "llm", "Running", ts(0), g)
    m.observe_run("ml", "other", "Running", ts(0), RunGauges())
    run = {"namespace": "ml", "run": "llm"}
    assert _value(reg, "spotrun_run_cost_usd", **run, capacity="spot") == 12.5
    assert _value(reg, "spotrun_run_cost_usd", **run, capacity="on-demand") == 2.0
    assert _value(reg, "spotrun_run_savings_ratio", **run) == 0.6
    assert _value(reg, "spotrun_budget_used_ratio", **run) == 0.145
    assert _value(reg, "spotrun_checkpoint_interval_seconds", **run) == 900
    assert (_value(reg, "spotrun_checkpoint_age_seconds", **run) or 0) > 0
    # No budget, nothing priced, no interval: no series (never a made-up 0).
    other = {"namespace": "ml", "run": "other"}
    assert _value(reg, "spotrun_run_cost_usd", **other, capacity="spot") == 0
    for name in (
        "spotrun_run_savings_ratio",
        "spotrun_budget_used_ratio",
        "spotrun_checkpoint_interval_seconds",
    ):
        assert _value(reg, name, **other) is None, name

    # Suspended: nothing checkpoints, so age and interval go; spend and budget stay.
    m.observe_run("ml", "llm", "Suspended", ts(0), g)
    assert _value(reg, "spotrun_checkpoint_age_seconds", **run) is None
    assert _value(reg, "spotrun_checkpoint_interval_seconds", **run) is None
    assert _value(reg, "spotrun_run_cost_usd", **run, capacity="spot") == 12.5
    assert _value(reg, "spotrun_budget_used_ratio", **run) == 0.145
    # Resumed, then finished: the same.
    m.observe_run("ml", "llm", "Running", ts(0), g)
    assert _value(reg, "spotrun_checkpoint_interval_seconds", **run) == 900
    m.observe_run("ml", "llm", "Succeeded", ts(0), dataclasses.replace(g, budget_used_ratio=None))
    assert _value(reg, "spotrun_checkpoint_age_seconds", **run) is None
    assert _value(reg, "spotrun_checkpoint_interval_seconds", **run) is None
    assert _value(reg, "spotrun_budget_used_ratio", **run) is None  # budget removed from spec
    assert _value(reg, "spotrun_run_savings_ratio", **run) == 0.6

    # Deleted: every series of the run goes, the other run keeps its own.
    m.observe_run("ml", "llm", None, None)
    text = generate_latest(reg).decode()
    assert 'run="llm"' not in text
    assert _value(reg, "spotrun_run_cost_usd", **other, capacity="on-demand") == 0
    m.observe_run("ml", "other", None, None)
    m.observe_run("ml", "other", None, None)  # twice (kopf DELETED + a late reconcile)
    for name in ("spotrun_run_cost_usd", "spotrun_checkpoint_age_seconds"):
        assert _series(reg, name) == [], name
    assert _value(reg, "spotrun_runs", phase="Running") == 0


def test_bounded_series_start_at_zero_so_increase_sees_the_first_event() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert {x["signal"] for x in _series(reg, "spotrun_lost_work_seconds_total")} == set(SIGNALS)
    assert {x["signal"] for x in _series(reg, "spotrun_recovery_seconds_count")} == set(SIGNALS)
    assert _value(reg, "spotrun_failures_total", reason="OOMKilled") == 0
    assert _series(reg, "spotrun_preemptions_total") == []  # where gangs run is not known yet
    where = {"instance_type": "p4d.24xlarge", "zone": "us-east-1a"}
    m.record([MetricEvent("placement", where), MetricEvent("placement", where)])
    series = _series(reg, "spotrun_preemptions_total")
    assert len(series) == len(SIGNALS) and {x["zone"] for x in series} == {"us-east-1a"}
    assert _value(reg, "spotrun_preemptions_total", signal="node-lost", **where) == 0
    m.record([MetricEvent("preemption", {"signal": "node-lost", **where})])
    assert _value(reg, "spotrun_preemptions_total", signal="node-lost", **where) == 1


def test_decisions_carry_the_run_gauges() -> None:
    def run(st: dict[str, object], d: Decision) -> dict[str, object]:
        return {**st, **{k: v for k, v in (d.status or {}).items() if v is not None}}

    budget = {"budget": {"maxUSD": 1000}}
    d = decide(observed(spec_over=budget), CFG)
    assert d.gauges == RunGauges(
        spot_usd=0.0, on_demand_usd=0.0, budget_used_ratio=0.0, checkpoint_interval_seconds=900
    )
    st = run({}, d)
    d = decide(observed(now=5, spec_over=budget, status=st, jobs={1: job(1)}, pods=gang(1)), CFG)
    placements = [m.labels for m in d.metrics if m.name == "placement"]
    assert placements == [
        {"instance_type": "p4d.24xlarge", "zone": "us-east-1a"},
        {"instance_type": "p4d.24xlarge", "zone": "us-east-1b"},
    ]
    st = run(st, d)
    # One hour of two spot p4d nodes.
    d = decide(observed(now=3605, spec_over=budget, status=st, jobs={1: job(1)}, pods=gang(1)), CFG)
    g = d.gauges
    assert g is not None and d.phase == "Running"
    p4d = DEFAULT_PRICES["p4d.24xlarge"]
    assert abs(g.spot_usd - 2 * p4d.spot_usd_per_hour) < 1e-6 and g.on_demand_usd == 0
    assert g.savings_ratio is not None
    assert abs(g.savings_ratio - (1 - p4d.spot_usd_per_hour / p4d.on_demand_usd_per_hour)) < 1e-9
    assert g.budget_used_ratio is not None
    assert abs(g.budget_used_ratio - g.spot_usd / 1000) < 1e-12
    assert g.checkpoint_interval_seconds == 900
    # Without a budget: no budget ratio.
    d = decide(observed(now=3605, status=st, jobs={1: job(1)}, pods=gang(1)), CFG)
    assert d.gauges is not None and d.gauges.budget_used_ratio is None
