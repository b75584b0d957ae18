"""Capacity requests: while the next attempt lacks nodes, the Deployment <run>-capacity
holds one pending placeholder per missing node for an autoscaler to launch, from the
notice on, and goes once the attempt is created."""

from __future__ import annotations

from typing import Any

from controller_fakes import CFG, REF, gang, job, merge, observed, pod, spec
from test_controller_shrink_rules import GPU_TAINT, fleet_node

from spotrun_api.spec import parse_spec
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.common import (
    LABEL_CAPACITY_FOR,
    LABEL_RUN,
    LABEL_SPARE_OF,
    is_capacity_request,
    is_spare,
)
from spotrun_operator.facts.signals import TAINT_SPOT_ITN, NodeInfo
from spotrun_operator.model.plan import ApplySpares, CreateJob, Decision, DeleteSpares
from spotrun_operator.model.spares import build_capacity_requests_deployment

NOTICE = (TAINT_SPOT_ITN, "", "NoSchedule")


def fleet(*nodes: NodeInfo) -> dict[str, NodeInfo]:
    return {n.name: n for n in nodes}


def world(*nodes: NodeInfo) -> dict[str, Any]:
    """The same nodes as the run's own nodes and as the fleet."""
    return {"nodes": list(nodes), "fleet": fleet(*nodes)}


def requests_applied(d: Decision) -> dict[str, Any] | None:
    return next(
        (a.body for a in d.actions
         if isinstance(a, ApplySpares) and a.body["metadata"]["name"] == "llm-capacity"),
        None,
    )  # fmt: skip


def placeholder(name: str, node: str | None, phase: str = "Running") -> dict[str, Any]:
    p: dict[str, Any] = pod(name, node_name=node, phase=phase)
    p["metadata"]["labels"] = {LABEL_RUN: "llm", LABEL_CAPACITY_FOR: "llm"}
    return p


def avoided(body: dict[str, Any]) -> list[str]:
    """The hostnames the placeholders' required node affinity keeps them off."""
    terms = body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    found = [
        e["values"]
        for t in terms
        for e in t["matchExpressions"]
        if e["key"] == "kubernetes.io/hostname" and e["operator"] == "NotIn"
    ]
    assert all(v == found[0] for v in found), "every term avoids the same nodes"
    return list(found[0]) if found else []


# --- the Deployment ----------------------------------------------------------------------


def test_a_request_is_a_spare_pod_under_its_own_label_one_per_node_of_either_kind() -> None:
    body = build_capacity_requests_deployment(
        REF, parse_spec(spec()), "spot", 2, avoid_nodes=["n1"], pull_images=["init:1"]
    )
    assert body["metadata"]["name"] == "llm-capacity"
    assert body["spec"]["replicas"] == 2
    # Its own selector: the spares' Deployment (spare-of) never adopts these pods.
    assert body["spec"]["selector"] == {"matchLabels": {LABEL_CAPACITY_FOR: "llm"}}
    labels = body["spec"]["template"]["metadata"]["labels"]
    assert labels[LABEL_RUN] == "llm" and labels[LABEL_CAPACITY_FOR] == "llm"
    assert LABEL_SPARE_OF not in labels
    ps = body["spec"]["template"]["spec"]
    assert ps["priorityClassName"] == "spotrun-spare"
    assert ps["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert [c["image"] for c in ps["initContainers"]] == ["init:1"]
    anti = ps["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [t["labelSelector"]["matchLabels"] for t in anti] == [
        {LABEL_CAPACITY_FOR: "llm"}, {LABEL_SPARE_OF: "llm"}]  # fmt: skip
    assert avoided(body) == ["n1"]
    request = placeholder("llm-capacity-x", None, "Pending")
    assert is_spare(request) and is_capacity_request(request)


# --- the first attempt on a group at zero -------------------------------------------------


def test_a_run_on_an_empty_group_asks_for_every_node_and_stops_asking_once_created() -> None:
    d = decide(observed(now=0, **world()), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    body = requests_applied(d)
    assert body is not None and body["spec"]["replicas"] == 2
    assert [e.reason for e in d.events if e.reason == "CapacityRequested"] == ["CapacityRequested"]
    st = merge({}, d)
    assert st["spares"] == {"requested": 2}
    assert st["conditions"] and st["phase"] == "Pending"
    # The same again: applied again (level-based), no second event.
    d = decide(observed(now=5, status=st, **world()), CFG)
    assert requests_applied(d)["spec"]["replicas"] == 2  # type: ignore[index]
    assert not [e for e in d.events if e.reason == "CapacityRequested"]
    st = merge(st, d)
    # One node joins and its placeholder runs there: it keeps its place, one more asked.
    n3 = fleet_node("n3")
    pods = {"spare_pods": [placeholder("llm-capacity-a", "n3"),
                           placeholder("llm-capacity-b", None, "Pending")]}  # fmt: skip
    d = decide(observed(now=10, status=st, **world(n3), **pods), CFG)
    body = requests_applied(d)
    assert body is not None and body["spec"]["replicas"] == 2
    assert avoided(body) == []  # n3 is held by a placeholder: not counted on yet
    st = merge(st, d)
    # The second joins: the attempt is created, the requests go.
    n4 = fleet_node("n4")
    d = decide(observed(now=20, status=st, **world(n3, n4), **pods), CFG)
    assert any(isinstance(a, CreateJob) for a in d.actions)
    assert requests_applied(d) is None
    assert DeleteSpares("llm-capacity") in d.actions
    assert DeleteSpares("llm-spares") not in d.actions  # no warm spares to touch
    spares = merge(st, d)["spares"]
    assert "requested" not in spares
    # The placeholder that held n3 bills its node as a spare does, until it goes.
    assert [p["name"] for p in spares["pods"]] == ["llm-capacity-a"]


# --- from the notice on ------------------------------------------------------------------


def running_on(*nodes: NodeInfo) -> dict[str, Any]:
    st: dict[str, Any] = merge({}, decide(observed(now=0, **world(*nodes)), CFG))
    d = decide(observed(now=5, status=st, jobs={1: job(1)}, pods=gang(1), **world(*nodes)), CFG)
    st = merge(st, d)
    assert st["phase"] == "Running" and "spares" not in st
    return st


def test_a_spot_notice_asks_for_the_replacement_before_the_gang_has_stopped() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    going = fleet_node("n2", taints=(GPU_TAINT, NOTICE))
    now = world(fleet_node("n1"), going)
    d = decide(observed(now=10, status=st, jobs={1: job(1)}, pods=gang(1), **now), CFG)
    st = merge(st, d)
    assert st["attempts"][0]["outcome"] == "Preempted"
    body = requests_applied(d)
    assert body is not None and body["spec"]["replicas"] == 1
    # Off the going node and off the survivor the next gang already counts on.
    assert avoided(body) == ["n1", "n2"]
    assert st["spares"] == {"requested": 1}
    (event,) = [e for e in d.events if e.reason == "CapacityRequested"]
    assert "attempt 2 lacks 1 of 2 node(s)" in event.message
    # While the gang stops, the request stands.
    stopping = gang(1, deleting=True)
    d = decide(observed(now=12, status=st, jobs={1: job(1)}, pods=stopping, **now), CFG)
    assert requests_applied(d)["spec"]["replicas"] == 1  # type: ignore[index]


def test_a_warm_spare_covers_the_notice_and_nothing_more_is_asked() -> None:
    n3 = fleet_node("n3")
    st = running_on(fleet_node("n1"), fleet_node("n2"), n3)
    spare = placeholder("llm-spares-x", "n3")
    spare["metadata"]["labels"] = {LABEL_RUN: "llm", LABEL_SPARE_OF: "llm"}
    going = fleet_node("n2", taints=(GPU_TAINT, NOTICE))
    d = decide(
        observed(now=10, status=st, jobs={1: job(1)}, pods=gang(1), spare_pods=[spare],
                 spec_over={"capacity": {"type": "spot", "instanceTypes": ["p4d.24xlarge"],
                                         "warmSpares": 1}},
                 **world(fleet_node("n1"), going, n3)),
        CFG,
    )  # fmt: skip
    assert merge(st, d)["attempts"][0]["outcome"] == "Preempted"
    assert requests_applied(d) is None
    assert DeleteSpares("llm-capacity") not in d.actions


def test_a_gang_of_four_short_of_two_keeps_the_placeholder_that_holds_a_node() -> None:
    four = {"nodes": 4}
    nodes = [fleet_node(f"n{i}") for i in (1, 2, 3, 4)]
    st = merge({}, decide(observed(now=0, spec_over=four, **world(*nodes)), CFG))
    pods4 = gang(1, nodes=("n1", "n2", "n3", "n4"))
    d = decide(observed(now=5, spec_over=four, status=st, jobs={1: job(1)}, pods=pods4,
                        **world(*nodes)), CFG)  # fmt: skip
    st = merge(st, d)
    going = [fleet_node(n, taints=(GPU_TAINT, NOTICE)) for n in ("n3", "n4")]
    n5 = fleet_node("n5")
    now = world(nodes[0], nodes[1], *going, n5)
    held = [placeholder("llm-capacity-a", "n5"), placeholder("llm-capacity-b", None, "Pending")]
    d = decide(observed(now=10, spec_over=four, status=st, jobs={1: job(1)}, pods=pods4,
                        spare_pods=held, **now), CFG)  # fmt: skip
    body = requests_applied(d)
    # n1, n2 and n5 fit: one node missing, plus the placeholder holding n5.
    assert body is not None and body["spec"]["replicas"] == 2
    assert avoided(body) == ["n1", "n2", "n3", "n4"]


def test_a_suspended_or_queued_run_asks_for_nothing_and_drops_its_requests() -> None:
    for over in ({"suspend": True}, {"queueName": "team-a"}):
        st: dict[str, Any] = {"spares": {"requested": 2}}
        d = decide(observed(now=0, spec_over=over, status=st, **world()), CFG)
        assert requests_applied(d) is None, over
        assert DeleteSpares("llm-capacity") in d.actions, over
        assert "requested" not in (merge(st, d).get("spares") or {}), over


def test_a_run_whose_nodes_fit_asks_for_nothing() -> None:
    d = decide(observed(now=0, **world(fleet_node("n1"), fleet_node("n2"))), CFG)
    assert any(isinstance(a, CreateJob) for a in d.actions)
    assert requests_applied(d) is None and DeleteSpares("llm-capacity") not in d.actions
    assert "spares" not in merge({}, d)
