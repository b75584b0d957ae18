"""spec.budget.maxUSD on the real cluster: a graceful stop when the next checkpoint
interval would overshoot, Suspended/BudgetExceeded until the budget is raised, a resume on
the raise, and the 80% warning posted exactly once (budget.py has the rules).

Priced from the operator's table (--pricing=table): spot p4d.24xlarge is estimated at
35% x $32.77/h = $11.4695/h per node, so $0.0031860/s for a one-node run.
"""

from __future__ import annotations

from typing import Any

import pytest
from cost_helpers import P4D_ON_DEMAND, StartOperator, events_of, node_usd, seconds
from kubernetes import client

from controller_helpers import (
    TR,
    condition,
    create,
    patch_spec,
    pods,
    running_gang,
    status,
    training_run,
    wait_status,
)
from kube_helpers import holds, poll
from recorder import Recorder

BURN = P4D_ON_DEMAND * 0.35 / 3600  # USD per second of one spot p4d node


def _deletions(rec: Recorder, run: str, attempt: str) -> dict[str, Any]:
    """Pod name -> deletionGracePeriodSeconds of the first state seen with a deletion."""
    out: dict[str, Any] = {}
    for ev in rec.snapshot():
        meta = ev.obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get("spotrun.dev/run") != run or labels.get("spotrun.dev/attempt") != attempt:
            continue
        if meta.get("deletionTimestamp") and meta["name"] not in out:
            out[meta["name"]] = meta.get("deletionGracePeriodSeconds")
    return out


def test_budget_stops_gracefully_before_overshooting_and_resumes_when_raised(
    start_operator: StartOperator,
    checkpoint_pvc: str,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    grace = 7
    # Next interval + grace at 2 nodes: 2 x $0.0031860/s x 307 s = $1.956 > $1.50, so the
    # gang must stop as soon as it runs, long before it has spent the budget.
    start_operator()
    pod_watch = Recorder(api_client, core.list_namespaced_pod, {"namespace": namespace}).start()
    try:
        create(
            custom,
            namespace,
            training_run(
                "capped",
                nodes=2,
                budget={"maxUSD": 1.5},
                terminationGracePeriodSeconds=grace,
                checkpoint={"volume": {"claimName": "ckpt"}, "interval": "5m"},
            ),
        )
        st = wait_status(
            custom,
            namespace,
            "capped",
            "the run Suspended for its budget, attempt 1 stopped",
            lambda s: (
                s.get("phase") == "Suspended" and "stoppedAt" in (s.get("attempts") or [{}])[0]
            ),
        )
        (entry,) = st["attempts"]
        assert entry["startedAt"], "the gang ran before the budget stopped it"
        assert (entry["outcome"], entry["reason"]) == ("BudgetExceeded", "BudgetExceeded")
        assert "the next 307s would bring it to" in entry["message"], entry
        assert "stopping now with a checkpoint" in entry["message"], entry
        # Stopped on the projection, with most of the budget left.
        assert entry["spotUSD"] < 0.5 * 1.5, entry
        for ctype in ("Suspended", "WithinBudget"):
            assert condition(st, ctype)["reason"] == "BudgetExceeded", condition(st, ctype)
        assert condition(st, "Suspended")["status"] == "True"
        assert condition(st, "WithinBudget")["status"] == "False"
        (stopped,) = events_of(core, namespace, "capped", "BudgetExceeded")
        assert stopped.type == "Warning" and stopped.message.startswith("attempt 1: spent ")
        assert not events_of(core, namespace, "capped", "BudgetWarning")
        assert (st["preemptions"], st["failures"]) == (0, 0)
        # Every rank got SIGTERM with the run's grace period (it saves a checkpoint), none
        # was force-deleted.
        grace_seen = _deletions(pod_watch, "capped", "1")
        assert len(grace_seen) == 2 and set(grace_seen.values()) == {grace}, grace_seen
        assert not pods(core, namespace, "capped", 1)

        # A raise too small for one more interval: still suspended, the message says how
        # much is needed, nothing starts.
        patch_spec(custom, namespace, "capped", {"budget": {"maxUSD": 1.6}})
        st = wait_status(
            custom,
            namespace,
            "capped",
            "the message naming the budget a resume needs",
            lambda s: (
                "needs spec.budget.maxUSD above" in condition(s, "WithinBudget").get("message", "")
            ),
        )
        assert st["phase"] == "Suspended" and st["attempt"] == 1
        holds(
            "no second attempt while the budget has no room",
            lambda: status(custom, namespace, "capped").get("attempt") == 1,
            duration=3,
        )

        # Enough for an interval: the next attempt starts from the checkpoint and runs.
        patch_spec(custom, namespace, "capped", {"budget": {"maxUSD": 5}})
        running_gang(core, namespace, "capped", 2, n=2)
        st = wait_status(
            custom,
            namespace,
            "capped",
            "attempt 2 Running within budget",
            lambda s: s.get("phase") == "Running" and s.get("attempt") == 2,
        )
        assert condition(st, "WithinBudget")["status"] == "True", condition(st, "WithinBudget")
        assert condition(st, "Suspended")["status"] == "False"
        assert (st["preemptions"], st["failures"]) == (0, 0)
        assert [e["attempt"] for e in st["attempts"]] == [1, 2]
        assert events_of(core, namespace, "capped", "Resuming")
        assert len(events_of(core, namespace, "capped", "BudgetExceeded")) == 1
    finally:
        pod_watch.stop()


def test_budget_warning_is_posted_once_at_80_percent(
    start_operator: StartOperator,
    checkpoint_pvc: str,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    # One node, checkpoint every 1 s, grace 1 s: the stop projection looks 2 s ahead, so the
    # run spends from 80% (~28 s) to 100% - 2 s of burn (~33 s) warned, reconciled every
    # second meanwhile.
    max_usd = round(35 * BURN, 4)
    start_operator("--resync-seconds=1", "--cost-update-seconds=1")
    run_watch = Recorder(
        api_client,
        custom.list_namespaced_custom_object,
        {"group": TR[0], "version": TR[1], "namespace": namespace, "plural": TR[2]},
    ).start()
    try:
        create(
            custom,
            namespace,
            training_run(
                "warned",
                nodes=1,
                budget={"maxUSD": max_usd},
                terminationGracePeriodSeconds=1,
                checkpoint={"volume": {"claimName": "ckpt"}, "interval": "1s"},
            ),
        )
        running_gang(core, namespace, "warned", 1, n=1)
        (warning,) = poll(
            "the BudgetWarning event",
            lambda: events_of(core, namespace, "warned", "BudgetWarning"),
            timeout=90,
        )
        assert warning.type == "Warning"
        assert f"of the ${max_usd:.2f} budget (8" in warning.message, warning.message
        assert " left at $11.47/h" in warning.message, warning.message

        st = wait_status(
            custom,
            namespace,
            "warned",
            "the run stopped at its budget, its gang gone",
            lambda s: s.get("phase") == "Suspended" and "stoppedAt" in s["attempts"][-1],
            timeout=60,
        )
        # The last attempt (another test's node reclaim may have cost this one a preemption;
        # the warning, persisted in the condition, is still posted once).
        entry = st["attempts"][-1]
        assert entry["outcome"] == "BudgetExceeded"
        # Warned while running between 80% and the stop: reconciled several times, each
        # time with the spend in the condition, never a second event.
        warned_states = {
            condition(ev.obj.get("status") or {}, "WithinBudget").get("message")
            for ev in run_watch.snapshot()
            if condition(ev.obj.get("status") or {}, "WithinBudget").get("reason")
            == "BudgetWarning"
        }
        assert len(warned_states) >= 2, warned_states
        assert len(events_of(core, namespace, "warned", "BudgetWarning")) == 1
        assert len(events_of(core, namespace, "warned", "BudgetExceeded")) == 1
        # Stopped ahead of the budget (the nodes bill until the gang is gone).
        ran = seconds(entry["startedAt"], entry["stoppedAt"])
        assert entry["spotUSD"] == pytest.approx(node_usd(ran, [P4D_ON_DEMAND * 0.35]), abs=2e-6)
        assert sum(e["spotUSD"] for e in st["attempts"]) < max_usd * 1.05
    finally:
        run_watch.stop()
