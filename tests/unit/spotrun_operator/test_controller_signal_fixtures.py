"""The operator's verdict on every real interruption trace (tests/fixtures/signals/*.yaml,
transcribed from the real components with citations): which write triggers it, its kind,
reason and budget; and the same verdict from what the cluster keeps when the operator was
not watching. Never an application failure."""

from __future__ import annotations

import pytest
from signal_replay import GRACE, Snapshot, fixture_names, replay

from spotrun_operator.facts import signals as s
from spotrun_operator.judging.classify import Verdict
from spotrun_operator.judging.classify import VerdictKind as Kind

# fixture -> (the change that triggers the verdict, the reason); None: the gang keeps running.
EXPECTED: dict[str, tuple[str, str] | None] = {
    "nth": ("taint_added:aws-node-termination-handler/spot-itn", s.SPOT_INTERRUPTION),
    "nth-queue": ("taint_added:aws-node-termination-handler/spot-itn", s.SPOT_INTERRUPTION),
    "rebalance": None,  # IMDS mode: taint and cordon only
    "rebalance-queue": ("disruption_target", s.REBALANCE),  # queue mode drains
    "asg": (
        "taint_added:aws-node-termination-handler/asg-lifecycle-termination",
        s.ASG_TERMINATION,
    ),
    "scheduled-maintenance": (
        "taint_added:aws-node-termination-handler/scheduled-maintenance",
        s.SCHEDULED_MAINTENANCE,
    ),
    "state-change": ("disruption_target", s.INSTANCE_STATE_CHANGE),
    "mng-rebalance": ("disruption_target", s.MNG_REBALANCE),
    "karpenter": ("node_deleting", s.KARPENTER_DISRUPTION),
    "karpenter-tgp": ("node_deleting", s.KARPENTER_DISRUPTION),
    "karpenter-drift": ("node_deleting", s.KARPENTER_DISRUPTION),
    "karpenter-drift-aborted": None,  # tainted, then un-tainted: nothing happened
    "ca-scale-down": ("taint_added:ToBeDeletedByClusterAutoscaler", s.CA_SCALE_DOWN),
    "out-of-service": ("taint_added:node.kubernetes.io/out-of-service", s.OUT_OF_SERVICE),
    "gke-preempt": ("conditions", s.GKE_PREEMPTION),
    "aks-evict": ("taint_added:remediator.kubernetes.azure.com/unschedulable", s.AKS_SPOT_EVICTION),
    "loss": ("node_deleted", s.NODE_LOST),  # Ready=Unknown counts only after the grace
    "shutdown": ("conditions", s.NODE_SHUTDOWN),
    "node-pressure": ("pod_status", s.NODE_PRESSURE),
    "critical-preemption": ("pod_status", s.KUBELET_PREEMPTION),
}
# What an operator that starts after the whole trace can still tell, where it differs: a
# Node deleted by the CCM or Karpenter took its taints and labels with it (node-lost, from
# the pods still bound to it); the out-of-service pods were force-deleted by the pod GC,
# only their UIDs, recorded when they appeared, are left (pod-replaced).
_DELETED = ("nth", "nth-queue", "asg", "state-change", "mng-rebalance", "ca-scale-down")
_DELETED_TOO = ("karpenter", "karpenter-tgp", "karpenter-drift", "aks-evict")
NOT_WATCHING: dict[str, str] = {
    **dict.fromkeys(_DELETED + _DELETED_TOO, s.NODE_LOST),
    "out-of-service": s.POD_REPLACED,
}


def budget(v: Verdict) -> str:
    """The budget a verdict spends (reconcile.py, outcomes.py)."""
    return {Kind.PREEMPTED: "preemption", Kind.FAILED: "failure"}.get(v.kind, "none")


def test_every_fixture_has_an_expected_verdict() -> None:
    assert sorted(EXPECTED) == fixture_names()


@pytest.mark.parametrize("signal", sorted(EXPECTED))
def test_the_real_trace_gets_its_reason_at_the_right_write(signal: str) -> None:
    expected = EXPECTED[signal]
    uids = Snapshot.of(signal).uids()  # recorded as soon as the pods exist
    first: tuple[str, Verdict] | None = None
    for change, snap in replay(signal):
        v = snap.verdict(uids=uids)
        assert v.kind is not Kind.FAILED, f"{change}: {v}"
        if first is None and v.kind not in (Kind.RUNNING, Kind.STARTING):
            first = (change, v)
    if expected is None:
        assert first is None, first
        assert snap.verdict(uids=uids, now=GRACE + 1).kind is Kind.RUNNING
        return
    assert first is not None, f"{signal}: the gang was never stopped"
    change, v = first
    assert (change, v.reason, v.kind, budget(v)) == (*expected, Kind.PREEMPTED, "preemption")
    assert v.node == "n1" and v.nodes == ("n1",) and v.zone == "us-east-1a"
    # Once the trace is over, the verdict names the same cause, also after the lost grace.
    for now in (0.0, GRACE + 1):
        end = snap.verdict(uids=uids, now=now)
        assert (end.kind, end.reason) == (Kind.PREEMPTED, expected[1])


@pytest.mark.parametrize("signal", sorted(k for k, v in EXPECTED.items() if v))
def test_an_operator_that_was_down_reaches_the_same_budget(signal: str) -> None:
    """Exactly-once when not watching: only what the cluster keeps (pods, nodes that still
    exist, the pod UIDs recorded when the pods appeared) and never the failure budget."""
    expected = EXPECTED[signal]
    assert expected is not None
    uids = Snapshot.of(signal).uids()
    *_, (_, snap) = replay(signal)
    v = snap.verdict(watching=False, uids=uids, now=GRACE + 1)
    assert (v.kind, v.reason, budget(v)) == (
        Kind.PREEMPTED,
        NOT_WATCHING.get(signal, expected[1]),
        "preemption",
    )


def test_out_of_service_pods_failed_by_the_pod_gc_are_a_preemption() -> None:
    """out-of-service.yaml: the pod GC marks the terminating pod Failed with no condition
    and no exit code (gc_controller.go gcTerminating): never an application failure, even
    with the node's taint forgotten."""
    uids = Snapshot.of("out-of-service").uids()
    failed = next(snap for change, snap in replay("out-of-service") if change == "pod_phase")
    v = failed.verdict(uids=uids)
    assert (v.kind, v.reason) == (Kind.PREEMPTED, s.OUT_OF_SERVICE)
    del failed.nodes["n1"]
    v = failed.verdict(uids=uids, watching=False)
    assert (v.kind, v.reason) == (Kind.PREEMPTED, s.NODE_LOST)


def test_the_soft_cluster_autoscaler_candidate_taint_alone_is_nothing() -> None:
    changes = list(replay("ca-scale-down"))
    change, snap = changes[0]
    assert change == "taint_added:DeletionCandidateOfClusterAutoscaler"
    assert snap.verdict(uids=snap.uids()).kind is Kind.RUNNING
