"""Stops with no infrastructure evidence get their own reasons and spend no budget; the
failure budget is charged only for a container that exited with an application error,
also when the operator was not watching."""

from __future__ import annotations

from typing import Any

import pytest
from controller_fakes import CFG, at, gang, job, merge, node, observed, pod, running_status, ts

from spotrun_operator.decisions import reconcile as R
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts import signals
from spotrun_operator.judging import classify as c
from spotrun_operator.judging.classify import NodeInfo
from spotrun_operator.judging.classify import VerdictKind as Kind
from spotrun_operator.model.plan import DeleteJob


def verdict(
    pods: list[dict[str, Any]], nodes: list[NodeInfo] | None = None, **kw: Any
) -> c.Verdict:
    nodes = nodes if nodes is not None else [node("n1"), node("n2", zone="us-east-1b")]
    return c.classify(pods=pods, nodes={n.name: n for n in nodes}, expected=2, now=at(0), **kw)


def test_a_users_kubectl_delete_pod_is_pod_deleted_and_spends_no_budget() -> None:
    gone = pod("w", node_name="n2", master=False, phase="Failed", exit_code=143)
    v = verdict(gang()[:1], deleted_pods=[gone])
    assert (v.kind, v.reason, v.node) == (Kind.INTERRUPTED, signals.POD_DELETED, "n2")
    terminating = pod("w", node_name="n2", master=False, deleting=True)
    v = verdict([gang()[0], terminating])
    assert (v.kind, v.reason) == (Kind.INTERRUPTED, signals.POD_DELETED)


def test_an_active_deadline_kill_is_deadline_exceeded_and_spends_no_budget() -> None:
    # kubernetes pkg/kubelet/active_deadline.go: pod Failed, reason DeadlineExceeded, the
    # containers stopped with their grace (the trainer saves and exits 143).
    pods = gang()
    pods[0] = pod("m", phase="Failed", exit_code=143, pod_reason="DeadlineExceeded")
    v = verdict(pods)
    assert (v.kind, v.reason, v.node) == (Kind.INTERRUPTED, signals.DEADLINE_EXCEEDED, "n1")


def test_infrastructure_evidence_beats_a_bare_delete() -> None:
    gone = pod("w", node_name="n2", master=False, phase="Failed", exit_code=143)
    nodes = [node("n1"), node("n2", taints=(signals.TAINT_SPOT_ITN,))]
    v = verdict(gang()[:1], nodes, deleted_pods=[gone])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.SPOT_INTERRUPTION)


def test_a_failed_pod_with_no_exit_code_is_never_an_application_failure() -> None:
    # The pod GC marks a terminating pod Failed with no condition (gcTerminating) and the
    # kubelet that would have reported an exit code is gone; the job says Failed too.
    pods = gang()
    pods[1] = pod("w", node_name="n2", master=False, phase="Failed")
    v = verdict(pods, job=job(1, "Failed"))
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, signals.POD_STOPPED, "n2")


def test_an_application_error_still_spends_the_failure_budget_when_the_job_failed() -> None:
    pods = gang()
    pods[1] = pod("w", node_name="n2", master=False, phase="Failed", exit_code=2)
    v = verdict(pods, job=job(1, "Failed"))
    assert (v.kind, v.reason) == (Kind.FAILED, "Error")


def test_mng_rebalance_drain_names_the_eviction_only_on_a_cordoned_spot_node() -> None:
    evicted = pod("w", node_name="n2", master=False, disruption="EvictionByEvictionAPI")
    cordoned = NodeInfo("n2", labels={signals.LABEL_EKS_CAPACITY: "SPOT"}, unschedulable=True)
    v = verdict([gang()[0], evicted], [node("n1"), cordoned])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.MNG_REBALANCE)
    on_demand = NodeInfo("n2", labels={signals.LABEL_EKS_CAPACITY: "ON_DEMAND"}, unschedulable=True)
    v = verdict([gang()[0], evicted], [node("n1"), on_demand])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.EVICTION)
    # A cordon alone is no evidence at all.
    assert verdict(gang(), [node("n1"), cordoned]).kind is Kind.RUNNING


def test_pre_v1_karpenter_taint_names_a_drain() -> None:
    evicted = pod("w", node_name="n2", master=False, disruption="EvictionByEvictionAPI")
    tainted = node("n2", taints=(signals.TAINT_KARPENTER_DISRUPTION_V1BETA1,))
    assert verdict(gang(), [node("n1"), tainted]).kind is Kind.RUNNING
    v = verdict([gang()[0], evicted], [node("n1"), tainted])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.KARPENTER_DISRUPTION)


def test_gke_impending_termination_taint_is_a_gke_preemption() -> None:
    tainted = node("n2", taints=(signals.TAINT_GKE_IMPENDING,))
    v = verdict(gang(), [node("n1"), tainted])
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, signals.GKE_PREEMPTION, "n2")


def test_a_shutdown_pod_on_a_gke_spot_node_is_a_gke_preemption_whatever_its_ready() -> None:
    """The kubelet's TerminationByKubelet on a gke-spot node names the preemption even when
    the node's Ready=False "shutting down" is not seen (already reset, or never read)."""
    shut = pod("w", node_name="n2", master=False, disruption="TerminationByKubelet")
    gke = NodeInfo("n2", labels={"cloud.google.com/gke-spot": "true"})
    v = verdict([gang()[0], shut], [node("n1"), gke])
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, signals.GKE_PREEMPTION, "n2")
    v = verdict([gang()[0], shut], [node("n1"), node("n2")])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, signals.NODE_SHUTDOWN)


def test_interrupted_attempt_spends_no_budget_and_resumes() -> None:
    st = running_status()
    pods = gang(1)
    pods[0] = pod("llm-a1-master-0", phase="Failed", exit_code=143)
    d = decide(observed(now=20, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("Interrupted", signals.SIGTERM)
    assert (st["preemptions"], st["failures"], st["phase"]) == (0, 0, "Recovering")
    assert "lastPreemption" not in st and entry["nextAttemptAt"] == ts(30)
    assert [e.reason for e in d.events] == ["Interrupted"]
    assert d.actions == [DeleteJob("llm-a1")]  # its pods go with it (garbage collector)
    assert not [m for m in d.metrics if m.name in ("preemption", "failure")]


def _born(pods: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    for p in pods:
        p["metadata"]["creationTimestamp"] = ts(seconds)
    return pods


def test_pod_uids_are_recorded_before_the_pods_run() -> None:
    d = decide(observed(), CFG)
    st = merge({}, d)
    pending = _born(
        [pod(p["metadata"]["name"], phase="Pending", master=i == 0) for i, p in enumerate(gang(1))],
        5,
    )
    # Just created: nothing a user waits on, so no write of its own; a look comes back.
    d = decide(observed(now=7, status=st, jobs={1: job(1)}, pods=pending), CFG)
    assert d.status is None
    assert d.requeue_after == pytest.approx(R.PLACEMENT_WRITE_SECONDS - 2)
    # Still not running (an image pull): recorded once the newest pod is old enough.
    d = decide(
        observed(now=5 + R.PLACEMENT_WRITE_SECONDS, status=st, jobs={1: job(1)}, pods=pending), CFG
    )
    st = merge(st, d)
    entry = st["attempts"][0]
    assert "startedAt" not in entry
    assert entry["podUIDs"] == sorted(p["metadata"]["uid"] for p in pending)
    # The pods vanish (their node was reclaimed) while the operator is down; the job fails.
    d = decide(observed(now=600, status=st, jobs={1: job(1, "Failed")}, pods=[]), CFG)
    st = merge(st, d)
    assert (st["preemptions"], st["failures"]) == (1, 0)
    assert st["attempts"][0]["reason"] == signals.POD_REPLACED


def test_a_gang_that_runs_at_once_is_placed_and_running_in_one_write() -> None:
    st = merge({}, decide(observed(), CFG))
    pods = _born(gang(1), 3)
    d = decide(observed(now=4, status=st, jobs={1: job(1)}, pods=pods), CFG)
    assert d.status is not None
    entry = d.status["attempts"][0]
    assert entry["startedAt"] == ts(4)
    assert entry["podUIDs"] == sorted(p["metadata"]["uid"] for p in pods)
    placed = {c["type"]: c for c in d.status["conditions"]}["CapacityAvailable"]
    assert (placed["status"], placed["reason"]) == ("True", "Scheduled")


def test_two_lost_nodes_of_one_gang_are_both_in_the_attempts_record() -> None:
    st = running_status()
    gone = [node("n1", exists=False), node("n2", exists=False, zone="us-east-1b")]
    d = decide(observed(now=30, status=st, jobs={1: job(1)}, pods=gang(1), nodes=gone), CFG)
    st = merge(st, d)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("Preempted", signals.NODE_LOST)
    assert entry["interruptedNodes"] == ["n1", "n2"] and st["preemptions"] == 1


def test_karpenter_deletion_and_an_nth_notice_on_two_nodes_are_one_verdict_naming_both() -> None:
    deleting = NodeInfo("n1", exists=False, deleting=True, finalizers=("karpenter.sh/termination",))
    tainted = node("n2", taints=(signals.TAINT_SPOT_ITN,), zone="us-east-1b")
    v = verdict(gang(), [deleting, tainted])
    assert (v.kind, v.reason, v.node, v.nodes) == (
        Kind.PREEMPTED,
        signals.SPOT_INTERRUPTION,
        "n2",
        ("n1", "n2"),
    )


@pytest.mark.parametrize(
    ("reason", "message", "code", "expected"),
    [
        ("Evicted", "The node was low on resource: memory. ", 137, signals.NODE_PRESSURE),
        ("Preempting", "Preempted in order to admit critical pod", 143, signals.KUBELET_PREEMPTION),
        (
            "NodeShutdown",
            "Pod was rejected as the node is shutting down.",
            143,
            signals.NODE_SHUTDOWN,
        ),
        (
            "Terminated",
            "Pod was terminated in response to imminent node shutdown.",
            143,
            "node-shutdown",
        ),
    ],
)
def test_kubelet_pod_reasons_name_the_cause_without_a_disruption_target(
    reason: str, message: str, code: int, expected: str
) -> None:
    """Clusters before DisruptionTarget (or a kubelet that did not add it) still set the pod
    reason (kubernetes pkg/kubelet/eviction, preemption, nodeshutdown); the kubelet's
    SIGKILL (137) is then not an application error."""
    pods = gang()
    pods[0] = pod("m", phase="Failed", exit_code=code, pod_reason=reason)
    pods[0]["status"]["message"] = message
    v = verdict(pods)
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, expected, "n1")


def test_a_deadline_kill_past_the_grace_still_spends_no_budget() -> None:
    pods = gang()
    pods[0] = pod("m", phase="Failed", exit_code=137, pod_reason="DeadlineExceeded")
    v = verdict(pods)
    assert (v.kind, v.reason) == (Kind.INTERRUPTED, signals.DEADLINE_EXCEEDED)
