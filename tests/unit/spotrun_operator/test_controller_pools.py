"""checkpoint.interval auto from the live preemption rate: the per-pool tally (pure), the
Young/Daly interval with its fallbacks and clamp, the runner's tally and its metrics."""

from __future__ import annotations

import random
from typing import Any

from controller_fakes import CFG, observed, ts
from prometheus_client import CollectorRegistry, generate_latest

from spotrun_api.enums import Outcome
from spotrun_api.status import Attempt
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts import pools as p
from spotrun_operator.model.plan import RunGauges
from spotrun_operator.runner import PoolHistory
from spotrun_operator.telemetry.metrics import Metrics

P4D_A = p.Pool("p4d.24xlarge", "us-east-1a", "spot")
P4D_B = p.Pool("p4d.24xlarge", "us-east-1b", "spot")


def attempt(n: int, seconds: float, outcome: str | None = "Preempted", **kw: Any) -> Attempt:
    raw = {
        "attempt": n,
        "capacityType": "spot",
        "instanceType": "p4d.24xlarge",
        "nodes": 1,
        "zones": ["us-east-1a"],
        "startedAt": ts(n * 100000),
        "endedAt": ts(n * 100000 + seconds),
        "outcome": outcome,
        **kw,
    }
    return Attempt.model_validate({k: v for k, v in raw.items() if v is not None})


def test_pool_keying_per_node_with_the_interruption_in_the_reclaimed_nodes_zone() -> None:
    gang = attempt(1, 3600, nodes=2, zones=["us-east-1a", "us-east-1b"], zone="us-east-1b")
    assert p.node_pools(gang) == [P4D_A, P4D_B]
    assert p.attempt_tally(gang) == {P4D_A: p.PoolStats(0, 3600), P4D_B: p.PoolStats(1, 3600)}
    # Zones not recorded: the zone is unknown; no zone of the node behind it: the first.
    bare = attempt(2, 100, nodes=2, zones=None, capacityType="on-demand")
    unknown = p.Pool("p4d.24xlarge", p.ANY_ZONE, "on-demand")
    assert p.attempt_tally(bare) == {unknown: p.PoolStats(1, 200)}
    # A live attempt, one that never ran and one without a type tell nothing.
    assert p.attempt_tally(attempt(3, 100, outcome=None)) == {}
    assert p.attempt_tally(Attempt(attempt=4, outcome=Outcome.PREEMPTED)) == {}
    assert p.attempt_tally(attempt(5, 100, instanceType=None)) == {}


def test_mtbf_over_every_runs_history_and_per_gang() -> None:
    run_a = [attempt(1, 7200), attempt(2, 7200, outcome="Succeeded")]
    run_b = [attempt(1, 3600, zones=["us-east-1b"]), attempt(2, 3600, zones=["us-east-1b"])]
    tally = p.pool_tally([run_a, run_b])
    assert tally == {P4D_A: p.PoolStats(1, 14400), P4D_B: p.PoolStats(2, 7200)}
    assert p.gang_mtbf(tally, [P4D_A]) == 14400
    # A gang is lost when any node is: rates add (1/14400 + 1/3600 = 1/2880).
    assert p.gang_mtbf(tally, [P4D_A, P4D_B]) == 2880
    # Zone unknown yet: every zone of the type and capacity together (3 in 21600 s).
    assert p.gang_mtbf(tally, [p.Pool("p4d.24xlarge", p.ANY_ZONE, "spot")]) == 7200
    # No interruption seen in a pool: no estimate from it.
    assert p.gang_mtbf(tally, [p.Pool("p4d.24xlarge", "us-east-1a", "on-demand")]) is None
    assert p.gang_mtbf({P4D_A: p.PoolStats(0, 99999)}, [P4D_A]) is None


def test_young_daly_is_clamped_to_a_minute_and_an_hour() -> None:
    assert p.young_daly(60, 7200) == 929  # sqrt(2 * 60 * 7200)
    assert p.young_daly(0.5, 600) == 60
    assert p.young_daly(0, 7200) == 60
    assert p.young_daly(600, 86400 * 30) == 3600


def test_auto_interval_fallbacks() -> None:
    tally = {P4D_A: p.PoolStats(1, 7200)}
    own = [attempt(1, 1800)]
    args: dict[str, Any] = {"tally": tally, "checkpoint_cost_seconds": 60.0}
    # A fixed interval is the spec's, whatever is known.
    assert p.auto_interval("5m", history=own, planned=[P4D_A], stall_seconds=1, **args) == 300
    # Pool MTBF 7200 s, measured stall 10 s: sqrt(2 * 10 * 7200) = 379.
    assert p.auto_interval("auto", history=own, planned=[P4D_A], stall_seconds=10, **args) == 379
    # No stall reported yet: the configured cost (60 s) -> 929.
    assert p.auto_interval("auto", history=[], planned=[P4D_A], stall_seconds=None, **args) == 929
    # Pools without an interruption: the run's own history (MTBF 1800 s) -> 464.
    assert p.auto_interval("auto", history=own, planned=[P4D_B], stall_seconds=None, **args) == 464
    # Nothing known at all: the default.
    assert p.auto_interval("auto", history=[], planned=[P4D_B], stall_seconds=None, **args) == 900


def _auto(stall: float | None = None) -> dict[str, Any]:
    progress = {"step": 0} if stall is None else {"step": 0, "checkpointStallSeconds": stall}
    return {"progress": progress}


def test_new_attempt_gets_the_pool_interval_with_the_runs_measured_stall() -> None:
    # One interruption per 36000 node-seconds in us-east-1a; a 2-node run of a new
    # attempt (zone unknown) has MTBF 18000 s.
    tally = {P4D_A: p.PoolStats(1, 36000.0)}
    auto = {"checkpoint": {"volume": {"claimName": "ckpt"}, "path": "/c", "interval": "auto"}}
    for status, want in ((None, 1469), (_auto(10.0), 600)):
        d = decide(observed(spec_over=auto, status=status, pools=tally), CFG)
        assert d.status is not None
        assert d.status["attempts"][0]["checkpointIntervalSeconds"] == want
    fixed = decide(observed(status=_auto(10.0), pools=tally), CFG)  # spec says 15m
    assert fixed.status is not None
    assert fixed.status["attempts"][0]["checkpointIntervalSeconds"] == 900


def test_runner_pool_history_counts_each_attempt_once_and_forgets_deleted_runs() -> None:
    h = PoolHistory()
    first = [attempt(1, 3600), attempt(2, 10, outcome=None)]
    h.record(("ns", "a"), first)
    h.record(("ns", "a"), first)  # the same status read again
    h.record(("ns", "b"), [attempt(1, 3600, outcome="Succeeded")])
    assert h.tally() == {P4D_A: p.PoolStats(1, 7200)}
    # Attempt 2 finished: the run's newer status replaces its older one.
    h.record(("ns", "a"), [attempt(1, 3600), attempt(2, 1800)])
    assert h.tally() == {P4D_A: p.PoolStats(2, 9000)}
    h.forget(("ns", "b"))
    assert h.tally() == {P4D_A: p.PoolStats(2, 5400)}


def test_runner_pool_history_kept_run_by_run_equals_the_sum_over_every_run() -> None:
    """The tally is updated run by run; after any sequence of records and forgets it is
    the sum over the histories it holds."""
    rng = random.Random(7)
    h = PoolHistory()
    histories: dict[tuple[str, str], list[Attempt]] = {}
    for _ in range(300):
        key = ("ns", f"r{rng.randrange(12)}")
        if rng.random() < 0.15:
            h.forget(key)
            histories.pop(key, None)
            continue
        n = rng.randrange(1, 5)
        outcomes = ["Preempted", "Failed", "Succeeded", None]
        zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
        history = [
            attempt(i, rng.randrange(1, 5000), outcome=rng.choice(outcomes), zones=[z], zone=z)
            for i, z in ((i, rng.choice(zones)) for i in range(1, n))
        ]
        h.record(key, history)
        histories[key] = history
        assert h.tally() == p.pool_tally(histories.values())


def test_pool_and_stall_metrics() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.observe_pools({P4D_A: p.PoolStats(2, 7200.0), P4D_B: p.PoolStats(0, 100.0)})
    gauges = RunGauges(checkpoint_interval_seconds=600.0, checkpoint_stall_seconds=2.5)
    m.observe_run("ns", "llm", "Running", None, gauges)
    text = generate_latest(registry).decode()
    where = 'capacity="spot",instance_type="p4d.24xlarge",zone="us-east-1a"'
    assert f"spotrun_pool_mtbf_seconds{{{where}}} 3600.0" in text
    assert f"spotrun_pool_interruptions{{{where}}} 2.0" in text
    assert 'spotrun_pool_node_seconds{capacity="spot",instance_type="p4d.24xlarge",zone=' in text
    assert "us-east-1b" not in "".join(
        line for line in text.splitlines() if line.startswith("spotrun_pool_mtbf_seconds{")
    )
    assert 'spotrun_checkpoint_stall_seconds{namespace="ns",run="llm"} 2.5' in text
    assert 'spotrun_checkpoint_interval_seconds{namespace="ns",run="llm"} 600.0' in text
