"""Through decide(): the budget (warn, stop with a checkpoint, resume when raised), the
backoff between attempts, rebalance recommendations, and a success the training operator
has not seen yet."""

from __future__ import annotations

import dataclasses
from typing import Any

from controller_fakes import (
    CFG,
    cond,
    gang,
    job,
    merge,
    node,
    observed,
    pod,
    running_status,
    ts,
)

from spotrun_dev import traces
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.model.plan import CreateJob, Decision, DeleteJob, DeletePods


def test_budget_warns_then_suspends_then_resumes_when_raised() -> None:
    st = running_status()
    budget = {"budget": {"maxUSD": 100}}
    # 2 spot p4d at ~$11.47/h each: ~$23/h. After 3.5 h ($80) the 80% warning comes once.
    d = decide(
        observed(now=12605, spec_over=budget, status=st, jobs={1: job(1)}, pods=gang(1)), CFG
    )
    st = merge(st, d)
    assert [e.reason for e in d.events] == ["BudgetWarning"]
    assert cond(st, "WithinBudget")["reason"] == "BudgetWarning"
    d = decide(
        observed(now=12700, spec_over=budget, status=st, jobs={1: job(1)}, pods=gang(1)), CFG
    )
    assert not d.events
    # Another 15 min checkpoint interval would overshoot: stop now, with a checkpoint.
    d = decide(
        observed(now=15005, spec_over=budget, status=st, jobs={1: job(1)}, pods=gang(1)), CFG
    )
    st = merge(st, d)
    assert DeleteJob("llm-a1") in d.actions
    assert st["attempts"][0]["outcome"] == "BudgetExceeded"
    assert st["phase"] == "Suspended" and cond(st, "Suspended")["reason"] == "BudgetExceeded"
    st = merge(st, decide(observed(now=15010, spec_over=budget, status=st), CFG))
    d = decide(observed(now=15020, spec_over=budget, status=st), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    assert "spec.budget.maxUSD above" in merge(st, d)["message"]
    d = decide(observed(now=15030, spec_over={"budget": {"maxUSD": 500}}, status=st), CFG)
    st = merge(st, d)
    assert st["attempt"] == 2 and any(isinstance(a, CreateJob) for a in d.actions)
    assert (st["preemptions"], st["failures"]) == (0, 0)
    assert st["cost"]["totalUSD"] > 80 and st["cost"]["savingsPercent"] > 50


def test_budget_condition_is_rewritten_no_more_often_than_the_cost() -> None:
    """The WithinBudget message names the spend, which moves every second: a reconcile
    woken by a trainer's progress patch must not write status for that alone."""
    st = running_status()
    budget = {"budget": {"maxUSD": 100}}

    def at(now: float, status: dict[str, Any], **spec: Any) -> Decision:
        obs = observed(
            now=now, spec_over={**budget, **spec}, status=status, jobs={1: job(1)}, pods=gang(1)
        )
        return decide(obs, CFG)

    st = merge(st, at(1000, st))
    first = cond(st, "WithinBudget")
    assert first["message"] == "spent $6.34 of the $100.00 budget (6.3%)"
    assert at(1000 + CFG.cost_update_seconds - 1, st).status is None  # spend moved: no write
    d = at(1000 + CFG.cost_update_seconds, st)  # due with the cost
    assert d.status is not None and d.status["cost"]["totalUSD"] > st["cost"]["totalUSD"]
    assert cond(merge(st, d), "WithinBudget")["message"] != first["message"]
    # A checkpoint the trainer committed since the last cost write makes the cost due:
    # the run changed anyway, and between checkpoints an idle run costs no write.
    saved = {**st, "progress": {"checkpointStep": 100, "checkpointTime": ts(1005)}}
    d = at(1010, saved)
    assert d.status is not None and d.status["cost"]["totalUSD"] > st["cost"]["totalUSD"]
    assert at(1010, {**saved, "progress": {"checkpointTime": ts(999)}}).status is None
    # A new verdict is written at once.
    d = at(1010, st, budget={"maxUSD": 7})
    assert d.status is not None and cond(merge(st, d), "WithinBudget")["reason"] != "WithinBudget"


def test_backoff_grows_for_repeated_preemptions() -> None:
    st = running_status()
    delays = []
    for n in (1, 2, 3):
        t = 1000 * n
        tainted = [node("n1", taints=(traces.NTH_SPOT_ITN,)), node("n2")]
        st = merge(
            st,
            decide(observed(now=t, status=st, jobs={n: job(n)}, pods=gang(n), nodes=tainted), CFG),
        )
        entry = st["attempts"][-1]
        delays.append(entry["nextAttemptAt"])
        st = merge(st, decide(observed(now=t + 1, status=st), CFG))
        st = merge(st, decide(observed(now=t + 500, status=st), CFG))
        assert st["attempt"] == n + 1
    assert delays == [ts(1010), ts(2020), ts(3040)]


def test_rebalance_alone_announces_without_restarting() -> None:
    st = running_status()
    nodes = [node("n1", taints=(traces.NTH_REBALANCE,)), node("n2")]
    d = decide(observed(now=20, status=st, jobs={1: job(1)}, pods=gang(1), nodes=nodes), CFG)
    assert not d.actions and merge(st, d)["preemptions"] == 0
    assert [e.reason for e in d.events] == ["RebalanceRecommendation"]
    restart = dataclasses.replace(CFG, restart_on_rebalance=True)
    d = decide(observed(now=20, status=st, jobs={1: job(1)}, pods=gang(1), nodes=nodes), restart)
    assert merge(st, d)["preemptions"] == 1


def test_steady_state_writes_nothing() -> None:
    st = running_status()
    d = decide(observed(now=6, status=st, jobs={1: job(1)}, pods=gang(1)), CFG)
    assert d.status is None and not d.actions and not d.events


def test_a_succeeded_attempt_keeps_its_job_even_before_the_training_operator_agrees() -> None:
    st = running_status()
    pods = [
        pod("llm-a1-master-0", node_name="n1", phase="Succeeded", exit_code=0),
        pod("llm-a1-worker-0", node_name="n2", master=False),
    ]
    d = decide(observed(now=50, status=st, jobs={1: job(1)}, pods=pods), CFG)
    assert merge(st, d)["phase"] == "Succeeded"
    assert d.actions == [DeletePods(("llm-a1-worker-0",), 110)]
