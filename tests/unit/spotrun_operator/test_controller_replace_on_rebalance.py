"""--replace-on-rebalance: a rebalance recommendation on a node of the running gang asks for
the replacement at once; the gang moves (a graceful stop, a preemption) once the
replacement holds the run's image, and a notice that comes first is handled as always."""

from __future__ import annotations

import dataclasses
from typing import Any

from controller_fakes import CFG, gang, job, merge, observed
from test_controller_capacity_requests import (
    avoided,
    placeholder,
    requests_applied,
    running_on,
    world,
)
from test_controller_shrink_rules import GPU_TAINT, fleet_node

from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.signals import TAINT_REBALANCE, TAINT_SPOT_ITN, NodeInfo
from spotrun_operator.model.plan import CreateJob, Decision

REPLACE = dataclasses.replace(CFG, replace_on_rebalance=True)
RECOMMENDED = (TAINT_REBALANCE, "", "NoSchedule")
NOTICE = (TAINT_SPOT_ITN, "", "NoSchedule")


def recommended(name: str) -> NodeInfo:
    """A node after NTH's IMDS rebalance handling: the taint and a cordon."""
    node: NodeInfo = fleet_node(name, cordoned=True, taints=(GPU_TAINT, RECOMMENDED))
    return node


def reasons(d: Decision, reason: str) -> list[str]:
    return [e.message for e in d.events if e.reason == reason]


def on_rebalance(st: dict[str, Any], now: float, *nodes: NodeInfo, **kw: Any) -> Decision:
    nodes_now = world(fleet_node("n1"), recommended("n2"), *nodes)
    return decide(observed(now=now, status=st, jobs={1: job(1)}, pods=gang(1), **kw, **nodes_now),
                  REPLACE)  # fmt: skip


def test_by_default_a_recommendation_asks_for_nothing_and_restarts_nothing() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    d = decide(observed(now=10, status=st, jobs={1: job(1)}, pods=gang(1),
                        **world(fleet_node("n1"), recommended("n2"))), CFG)  # fmt: skip
    st = merge(st, d)
    assert "outcome" not in st["attempts"][0] and requests_applied(d) is None
    (said,) = reasons(d, "RebalanceRecommendation")
    assert "not restarting on the recommendation alone" in said


def test_the_replacement_is_asked_at_once_and_the_gang_moves_once_it_holds_the_image() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    d = on_rebalance(st, 10)
    st = merge(st, d)
    assert "outcome" not in st["attempts"][0] and st["phase"] == "Running"
    body = requests_applied(d)
    assert body is not None and body["spec"]["replicas"] == 1
    assert avoided(body) == ["n1", "n2"]  # a new node: not the going one, not the survivor
    assert st["spares"] == {"requested": 1}
    (said,) = reasons(d, "RebalanceRecommendation")
    assert "asking for a replacement node" in said
    (asked,) = reasons(d, "CapacityRequested")
    assert "attempt 2 lacks 1 of 2 node(s)" in asked
    assert d.requeue_after <= REPLACE.capacity_poll_seconds
    # The node joins; its placeholder is bound there and still pulling: keep training.
    pulling = [placeholder("llm-capacity-a", "n3", "Pending")]
    d = on_rebalance(st, 70, fleet_node("n3"), spare_pods=pulling)
    st = merge(st, d)
    assert "outcome" not in st["attempts"][0]
    assert requests_applied(d)["spec"]["replicas"] == 1
    assert avoided(requests_applied(d)) == ["n1", "n2"]
    # Its image is there (the placeholder runs): the recommendation counts as a notice.
    warm = [placeholder("llm-capacity-a", "n3")]
    d = on_rebalance(st, 130, fleet_node("n3"), spare_pods=warm)
    st = merge(st, d)
    first = st["attempts"][0]
    assert (first["outcome"], first["reason"]) == ("Preempted", "rebalance-recommendation")
    assert (st["preemptions"], st.get("failures", 0)) == (1, 0)
    assert not any(isinstance(a, CreateJob) for a in d.actions)  # the gang stops first
    assert requests_applied(d)["spec"]["replicas"] == 1
    # Once the gang is gone, attempt 2 is created off the going node.
    assert first["nextAttemptAt"] == first["endedAt"]  # onto warm capacity: no backoff
    d = decide(observed(now=131, status=st, jobs={1: job(1)}, spare_pods=warm,
                        **world(fleet_node("n1"), recommended("n2"), fleet_node("n3"))),
               REPLACE)  # fmt: skip
    created = [a for a in d.actions if isinstance(a, CreateJob)]
    assert [a.body["metadata"]["name"] for a in created] == ["llm-a2"]
    assert "n2" in str(created[0].body["spec"]["pytorchReplicaSpecs"]["Master"]["template"])


def test_a_notice_before_the_replacement_is_warm_is_a_spot_interruption() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    st = merge(st, on_rebalance(st, 10))
    itn = fleet_node("n2", cordoned=True, taints=(GPU_TAINT, RECOMMENDED, NOTICE))
    pulling = [placeholder("llm-capacity-a", "n3", "Pending")]
    d = decide(observed(now=40, status=st, jobs={1: job(1)}, pods=gang(1), spare_pods=pulling,
                        **world(fleet_node("n1"), itn, fleet_node("n3"))), REPLACE)  # fmt: skip
    st = merge(st, d)
    assert (st["attempts"][0]["outcome"], st["attempts"][0]["reason"]) == (
        "Preempted", "spot-interruption")  # fmt: skip
    assert requests_applied(d)["spec"]["replicas"] == 1


def test_a_free_node_that_fits_is_a_ready_replacement() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"), fleet_node("n3"))
    d = on_rebalance(st, 10, fleet_node("n3"))
    st = merge(st, d)
    assert st["attempts"][0]["reason"] == "rebalance-recommendation"
    assert requests_applied(d) is None  # nothing is lacking


def test_restart_on_rebalance_still_restarts_at_once() -> None:
    both = dataclasses.replace(REPLACE, restart_on_rebalance=True)
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    d = decide(observed(now=10, status=st, jobs={1: job(1)}, pods=gang(1),
                        **world(fleet_node("n1"), recommended("n2"))), both)  # fmt: skip
    st = merge(st, d)
    assert st["attempts"][0]["reason"] == "rebalance-recommendation"
    assert requests_applied(d)["spec"]["replicas"] == 1
