"""--train-through-notice: a spot interruption notice on a node of the running gang asks
for the replacement at once while the gang trains on; the gang moves (a graceful stop, a
spot-interruption preemption) once the replacement holds the run's image, or when the
notice leaves only the stop margin, counted from the notice's first sighting."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from controller_fakes import CFG, at, gang, job, merge, observed
from test_controller_capacity_requests import (
    avoided,
    placeholder,
    requests_applied,
    running_on,
    world,
)
from test_controller_shrink_rules import GPU_TAINT, fleet_node

from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.common import fmt_time
from spotrun_operator.facts.signals import (
    KARPENTER_TERMINATION_FINALIZER,
    TAINT_KARPENTER_DISRUPTED,
    TAINT_SPOT_ITN,
    NodeInfo,
)
from spotrun_operator.model.plan import CreateJob, Decision, EnsureObjects

RIDE = dataclasses.replace(CFG, train_through_notice=True)
NOTICE = (TAINT_SPOT_ITN, "", "NoSchedule")


def noticed(name: str) -> NodeInfo:
    """A node after NTH's spot-itn handling: the taint and the cordon (the drain is held)."""
    node: NodeInfo = fleet_node(name, cordoned=True, taints=(GPU_TAINT, NOTICE))
    return node


def karpenter_terminating(name: str, tainted: bool = True) -> NodeInfo:
    """A node after Karpenter's interruption handling: its NodeClaim deleted, so the Node's
    deletionTimestamp held by the termination finalizer, then (one PATCH) the disrupted
    taint; no cordon (tests/fixtures/signals/karpenter.yaml)."""
    taints = (GPU_TAINT, (TAINT_KARPENTER_DISRUPTED, "", "NoSchedule")) if tainted else (GPU_TAINT,)
    node: NodeInfo = dataclasses.replace(
        fleet_node(name, taints=taints), exists=False, deleting=True, deleting_since=at(10),
        finalizers=(KARPENTER_TERMINATION_FINALIZER,),
    )  # fmt: skip
    return node


def on_notice(
    st: dict[str, Any], now: float, *nodes: NodeInfo, going: NodeInfo | None = None, **kw: Any
) -> Decision:
    nodes_now = world(fleet_node("n1"), going or noticed("n2"), *nodes)
    return decide(observed(now=now, status=st, jobs={1: job(1)}, pods=gang(1), **kw, **nodes_now),
                  RIDE)  # fmt: skip


def outcome(st: dict[str, Any]) -> tuple[str, str] | None:
    first = st["attempts"][0]
    return (first["outcome"], first["reason"]) if "outcome" in first else None


def test_by_default_a_notice_stops_the_gang_at_once() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    d = decide(observed(now=10, status=st, jobs={1: job(1)}, pods=gang(1),
                        **world(fleet_node("n1"), noticed("n2"))), CFG)  # fmt: skip
    st = merge(st, d)
    assert outcome(st) == ("Preempted", "spot-interruption")
    assert "noticeSince" not in st["attempts"][0]


def test_the_gang_trains_through_the_notice_and_moves_once_the_replacement_is_warm() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    d = on_notice(st, 10)
    st = merge(st, d)
    assert outcome(st) is None and st["phase"] == "Running"
    assert st["attempts"][0]["noticeSince"] == fmt_time(at(10))
    body = requests_applied(d)
    assert body is not None and body["spec"]["replicas"] == 1
    assert avoided(body) == ["n1", "n2"]
    said = [e.message for e in d.events if e.reason == "SpotInterruptionNotice"]
    assert len(said) == 1 and "stops gracefully at " + fmt_time(at(10 + 80)) in said[0]
    assert d.requeue_after <= RIDE.capacity_poll_seconds
    assert not any(a.names for a in d.actions if hasattr(a, "names"))  # no pod is deleted
    # The replacement is bound and still pulling: train on; the first sighting stays.
    pulling = [placeholder("llm-capacity-a", "n3", "Pending")]
    st = merge(st, d := on_notice(st, 60, fleet_node("n3"), spare_pods=pulling))
    assert outcome(st) is None and requests_applied(d)["spec"]["replicas"] == 1
    assert st["attempts"][0]["noticeSince"] == fmt_time(at(10))
    # It holds the image: the notice is acted on, a preemption, never a failure.
    warm = [placeholder("llm-capacity-a", "n3")]
    st = merge(st, d := on_notice(st, 70, fleet_node("n3"), spare_pods=warm))
    assert outcome(st) == ("Preempted", "spot-interruption")
    assert (st["preemptions"], st.get("failures", 0)) == (1, 0)
    assert not any(isinstance(a, CreateJob) for a in d.actions)  # the gang stops first
    assert st["attempts"][0]["nextAttemptAt"] == fmt_time(at(70))  # warm: no backoff
    # Once the gang is gone, attempt 2 is created off the noticed node.
    d = decide(observed(now=72, status=st, jobs={1: job(1)}, spare_pods=warm,
                        **world(fleet_node("n1"), noticed("n2"), fleet_node("n3"))),
               RIDE)  # fmt: skip
    created = [a for a in d.actions if isinstance(a, CreateJob)]
    assert [a.body["metadata"]["name"] for a in created] == ["llm-a2"]


@pytest.mark.parametrize("tainted", [False, True], ids=["deleting", "deleting+tainted"])
def test_karpenters_interruption_is_ridden_the_same_way(tainted: bool) -> None:
    """Without NTH, Karpenter deletes the node at the notice: by default the gang stops at
    once; with the flag it trains on (the verdict sees the node as before the deletion),
    asks for one node off both, and moves once the placeholder runs, a preemption."""
    going = karpenter_terminating("n2", tainted)
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    d = decide(observed(now=10, status=st, jobs={1: job(1)}, pods=gang(1),
                        **world(fleet_node("n1"), going)), CFG)  # fmt: skip
    assert outcome(merge(st, d)) == ("Preempted", "karpenter-disruption")
    st = merge(st, d := on_notice(st, 10, going=going))
    assert outcome(st) is None and st["phase"] == "Running"
    assert st["attempts"][0]["noticeSince"] == fmt_time(at(10))
    body = requests_applied(d)
    assert body is not None and body["spec"]["replicas"] == 1 and avoided(body) == ["n1", "n2"]
    said = [e.message for e in d.events if e.reason == "SpotInterruptionNotice"]
    assert len(said) == 1 and "node n2 is being terminated by Karpenter" in said[0]
    st = merge(st, on_notice(st, 50, going=going))  # Karpenter's drain is held: train on
    assert outcome(st) is None
    warm = [placeholder("llm-capacity-a", "n3")]
    st = merge(st, on_notice(st, 60, fleet_node("n3"), going=going, spare_pods=warm))
    assert outcome(st) == ("Preempted", "karpenter-disruption")
    assert (st["preemptions"], st.get("failures", 0)) == (1, 0)
    assert st["attempts"][0]["nextAttemptAt"] == fmt_time(at(60))  # warm: no backoff


def test_a_karpenter_node_that_is_gone_or_shutting_down_is_not_held() -> None:
    """Only the notice's marks are hidden: the Node deleted (its finalizer removed, the
    instance ended) or the kubelet shutting down stop the gang at once."""
    for going in (
        dataclasses.replace(karpenter_terminating("n2"), finalizers=()),
        dataclasses.replace(karpenter_terminating("n2"), ready="False",
                            ready_message="node is shutting down"),
    ):  # fmt: skip
        st = running_on(fleet_node("n1"), fleet_node("n2"))
        st = merge(st, on_notice(st, 10, going=going))
        assert outcome(st) is not None, going


def test_the_gang_stops_gracefully_at_the_stop_margin_without_a_replacement() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    st = merge(st, on_notice(st, 10))
    st = merge(st, d := on_notice(st, 89))  # 120 - 40 s of margin: until 90
    assert outcome(st) is None and 0 < d.requeue_after <= 1.0
    st = merge(st, on_notice(st, 90))
    assert outcome(st) == ("Preempted", "spot-interruption")
    assert (st["preemptions"], st.get("failures", 0)) == (1, 0)
    assert st["attempts"][0]["nextAttemptAt"] > fmt_time(at(90))  # no warm node: backoff


def test_a_slow_save_widens_the_margin() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    st["progress"] = {"step": 100, "checkpointStallSeconds": 30.0}
    st = merge(st, on_notice(st, 10))
    st = merge(st, on_notice(st, 69))  # 2 x 30 s: until 70
    assert outcome(st) is None
    st = merge(st, on_notice(st, 70))
    assert outcome(st) == ("Preempted", "spot-interruption")


def test_the_margin_counts_from_the_first_sighting_recorded_in_status() -> None:
    """A restarted operator reads noticeSince back: the stop is not pushed past the
    instance's end."""
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    st["attempts"][0]["noticeSince"] = fmt_time(at(0))
    st = merge(st, on_notice(st, 80))
    assert outcome(st) == ("Preempted", "spot-interruption")


def test_a_lost_node_is_not_held() -> None:
    st = running_on(fleet_node("n1"), fleet_node("n2"))
    st = merge(st, on_notice(st, 10))
    gone = dataclasses.replace(noticed("n2"), exists=False)
    d = decide(observed(now=20, status=st, jobs={1: job(1)}, pods=gang(1),
                        **world(fleet_node("n1"), gone)), RIDE)  # fmt: skip
    st = merge(st, d)
    assert outcome(st) is not None and outcome(st) != ("Preempted", "spot-interruption")


def test_the_run_gets_a_budget_that_holds_evictions_only_with_the_flag() -> None:
    def pdbs(cfg: Any) -> list[dict[str, Any]]:
        d = decide(observed(now=0, **world(fleet_node("n1"), fleet_node("n2"))), cfg)
        objs = [o for a in d.actions if isinstance(a, EnsureObjects) for o in a.objects]
        return [o for o in objs if o["kind"] == "PodDisruptionBudget"]

    assert pdbs(CFG) == []
    (pdb,) = pdbs(RIDE)
    assert pdb["metadata"]["name"] == "llm-gang" and pdb["spec"]["minAvailable"] == 2
    sel = pdb["spec"]["selector"]
    assert sel["matchLabels"] == {"spotrun.dev/run": "llm"}
    assert {e["key"] for e in sel["matchExpressions"]} == {
        "spotrun.dev/spare-of", "spotrun.dev/capacity-for"}  # fmt: skip
    assert {e["operator"] for e in sel["matchExpressions"]} == {"DoesNotExist"}
    assert pdb["metadata"]["ownerReferences"][0]["kind"] == "TrainingRun"
