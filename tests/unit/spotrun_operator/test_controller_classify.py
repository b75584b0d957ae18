"""Every interruption trace maps to the right verdict; failures never pass for preemptions
nor the other way round."""

from __future__ import annotations

from dataclasses import replace as dataclasses_replace
from typing import Any

import pytest
from controller_fakes import at, gang, job, node, pod

from spotrun_dev import traces
from spotrun_operator.facts import signals
from spotrun_operator.judging import classify as c
from spotrun_operator.judging.classify import NodeInfo
from spotrun_operator.judging.classify import VerdictKind as Kind


def verdict(
    pods: list[dict[str, Any]], nodes: list[NodeInfo] | None = None, **kw: Any
) -> c.Verdict:
    nodes = nodes if nodes is not None else [node("n1"), node("n2", zone="us-east-1b")]
    kw.setdefault("expected", 2)
    kw.setdefault("now", at(0))
    return c.classify(pods=pods, nodes={n.name: n for n in nodes}, **kw)


def test_running_gang() -> None:
    assert verdict(gang()).kind is Kind.RUNNING


def test_partial_gang_is_starting() -> None:
    assert verdict(gang()[:1]).kind is Kind.STARTING


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ("nth", c.SPOT_INTERRUPTION),
        ("asg", c.ASG_TERMINATION),
        ("scheduled-maintenance", signals.SCHEDULED_MAINTENANCE),
        ("out-of-service", signals.OUT_OF_SERVICE),
    ],
)
def test_interruption_taints_are_preemptions(signal: traces.Signal, expected: str) -> None:
    taint = traces.SIGNAL_TAINT[signal]
    assert taint is not None
    v = verdict(gang(), [node("n1"), node("n2", taints=(taint,), zone="us-east-1b")])
    assert (v.kind, v.reason, v.node, v.zone) == (Kind.PREEMPTED, expected, "n2", "us-east-1b")
    assert v.instance_type == "p4d.24xlarge"


def test_karpenter_taint_counts_only_once_the_node_is_deleted() -> None:
    """karpenter-drift-aborted.yaml: drift taints first and un-taints when the command fails
    (kubernetes-sigs/karpenter pkg/controllers/disruption/queue.go), so the taint alone is
    no preemption; with the node's deletionTimestamp (karpenter.yaml) it is."""
    tainted = node("n2", taints=(traces.KARPENTER_DISRUPTED,), zone="us-east-1b")
    assert verdict(gang(), [node("n1"), tainted]).kind is Kind.RUNNING
    deleting = dataclasses_replace(tainted, exists=False, deleting=True)
    v = verdict(gang(), [node("n1"), deleting])
    assert (v.kind, v.reason, v.node, v.zone) == (
        Kind.PREEMPTED,
        c.KARPENTER_DISRUPTION,
        "n2",
        "us-east-1b",
    )


def test_rebalance_alone_is_not_a_preemption_by_default() -> None:
    nodes = [node("n1", taints=(traces.NTH_REBALANCE,)), node("n2")]
    assert verdict(gang(), nodes).kind is Kind.RUNNING
    v = verdict(gang(), nodes, restart_on_rebalance=True)
    assert (v.kind, v.reason) == (Kind.PREEMPTED, c.REBALANCE)


def test_spot_itn_wins_over_rebalance_on_the_same_node() -> None:
    nodes = [node("n1", taints=(traces.NTH_REBALANCE, traces.NTH_SPOT_ITN)), node("n2")]
    assert verdict(gang(), nodes, restart_on_rebalance=True).reason == c.SPOT_INTERRUPTION


def test_eviction_api_disruption_target_is_a_preemption() -> None:
    pods = gang()
    pods[1] = pod(
        "w", node_name="n2", master=False, disruption="EvictionByEvictionAPI", deleting=True
    )
    v = verdict(pods)
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, signals.EVICTION, "n2")


def test_taint_on_the_node_names_the_cause_of_an_eviction() -> None:
    pods = [
        gang()[0],
        pod("w", node_name="n2", master=False, disruption="EvictionByEvictionAPI", deleting=True),
    ]
    nodes = [node("n1"), node("n2", taints=(traces.NTH_SPOT_ITN,))]
    assert verdict(pods, nodes).reason == c.SPOT_INTERRUPTION


def test_loss_node_unknown_then_deleted() -> None:
    unknown = [node("n1"), node("n2", ready="Unknown")]
    assert verdict(gang(), unknown).reason == c.NODE_LOST
    deleted = [node("n1")]  # n2 no longer exists and nothing is remembered of it
    v = verdict(gang(), deleted)
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, c.NODE_LOST, "n2")


def test_remembered_taint_of_a_deleted_node_keeps_its_signal() -> None:
    nodes = [node("n1"), node("n2", taints=(traces.NTH_ASG_TERMINATION,), exists=False)]
    assert verdict(gang(), nodes).reason == c.ASG_TERMINATION


def test_graceful_node_shutdown_exit_143_with_disruption_target() -> None:
    pods = gang()
    pods[0] = pod(
        "m",
        node_name="n1",
        phase="Failed",
        exit_code=143,
        disruption=traces.TERMINATION_BY_KUBELET,
        pod_reason="Terminated",
    )
    shutting = node("n1", ready="False", message=traces.NODE_SHUTDOWN_MESSAGE)
    for nodes in ([shutting, node("n2")], [node("n1"), node("n2")]):
        v = verdict(pods, nodes)
        assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, c.NODE_SHUTDOWN, "n1")


def test_survivor_crash_with_a_lost_peer_is_a_preemption_not_a_failure() -> None:
    pods = gang()
    pods[0] = pod("m", node_name="n1", phase="Failed", exit_code=1)  # NCCL error
    v = verdict(pods, [node("n1"), node("n2", ready="Unknown")])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, c.NODE_LOST)


def test_exit1_settles_then_is_an_application_failure() -> None:
    pods = gang()
    pods[0] = pod("m", node_name="n1", phase="Failed", exit_code=1, finished=0)
    v = verdict(pods, now=at(1), failure_settle_seconds=5)
    assert v.kind is Kind.FAILURE_SETTLING and v.until == at(5)
    v = verdict(pods, now=at(6), failure_settle_seconds=5)
    assert (v.kind, v.reason) == (Kind.FAILED, "Error")
    assert "exited 1" in v.message


def test_oomkilled_is_a_failure_not_a_preemption() -> None:
    pods = gang()
    pods[1] = pod(
        "w", node_name="n2", master=False, phase="Failed", exit_code=137, term_reason="OOMKilled"
    )
    v = verdict(pods)
    assert (v.kind, v.reason) == (Kind.FAILED, "OOMKilled")


def test_exit_143_without_any_evidence_is_an_unexplained_sigterm_spending_no_budget() -> None:
    """Issue 10: a bare exit 143 is no longer a preemption: reason sigterm, kind
    INTERRUPTED (neither the preemption nor the failure budget)."""
    pods = gang()
    pods[0] = pod("m", node_name="n1", phase="Failed", exit_code=143)
    v = verdict(pods)
    assert (v.kind, v.reason, v.node) == (Kind.INTERRUPTED, c.SIGTERM, "n1")


@pytest.mark.parametrize(
    "reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"]
)
def test_config_errors(reason: str) -> None:
    pods = gang()
    pods[1] = pod("w", node_name="n2", master=False, phase="Pending", waiting=reason)
    v = verdict(pods)
    assert v.kind is Kind.CONFIG_ERROR and reason in v.message


def test_missing_pvc_is_a_config_error_not_capacity() -> None:
    msg = '0/10 nodes are available: persistentvolumeclaim "ckpt" not found.'
    pods = [pod("m", node_name=None, phase="Pending", unschedulable=msg)]
    assert verdict(pods).kind is Kind.CONFIG_ERROR


def test_unschedulable_is_waiting_for_capacity() -> None:
    msg = "0/10 nodes are available: 10 Insufficient nvidia.com/gpu."
    pods = [gang()[0], pod("w", node_name=None, master=False, phase="Pending", unschedulable=msg)]
    v = verdict(pods)
    assert (v.kind, v.message) == (Kind.UNSCHEDULABLE, msg)


def test_master_succeeded_wins() -> None:
    pods = gang()
    pods[0] = pod("m", node_name="n1", phase="Succeeded", exit_code=0)
    assert verdict(pods).kind is Kind.SUCCEEDED
    assert verdict(gang(), job=job(1, "Succeeded")).kind is Kind.SUCCEEDED


def test_deleted_pod_remembered_from_the_watch() -> None:
    gone = pod("w", node_name="n2", master=False, disruption="EvictionByEvictionAPI")
    v = verdict(
        gang()[:1],
        deleted_pods=[gone],
        nodes=[node("n1"), node("n2", taints=(traces.KARPENTER_DISRUPTED,), exists=False)],
    )
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, c.KARPENTER_DISRUPTION, "n2")


def test_replaced_pod_is_a_preemption() -> None:
    pods = gang()
    v = verdict(pods, known_pod_uids=["uid-llm-a1-master-0", "uid-old-worker"])
    assert (v.kind, v.reason) == (Kind.PREEMPTED, c.POD_REPLACED)


def test_job_failed_without_pods_is_a_loss_not_an_application_failure() -> None:
    """Issue 10: the pods went (with their node) while the operator was down; no container
    exited with an application error, so the failure budget is not charged."""
    v = verdict([], job=job(1, "Failed"))
    assert (v.kind, v.reason) == (Kind.PREEMPTED, c.POD_REPLACED)
    assert "job Failed" in v.message


def test_node_info_from_a_node_object() -> None:
    obj = {
        "metadata": {"name": "n9", "labels": {"topology.kubernetes.io/zone": "us-east-1b"}},
        "spec": {"taints": [{"key": traces.NTH_SPOT_ITN, "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    info = c.node_info(obj)
    assert info.zone == "us-east-1b" and c.node_signal(info) == c.SPOT_INTERRUPTION


def test_a_node_karpenter_is_deleting_is_a_karpenter_disruption_before_its_taint() -> None:
    # Karpenter v1's order (tests/fixtures/signals/karpenter.yaml): the NodeClaim delete
    # gives the Node a deletionTimestamp held by its termination finalizer, then the taint.
    meta = {"name": "n1", "deletionTimestamp": "2026-11-22T10:00:00Z"}
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    held = {"metadata": {**meta, "finalizers": [signals.KARPENTER_TERMINATION_FINALIZER]}}
    info = c.node_info({**held, **ready})
    assert not info.exists and info.deleting
    assert c.node_signal(info) == c.KARPENTER_DISRUPTION
    # A node deleted by anything else (the cloud controller manager) is lost.
    assert c.node_signal(c.node_info({"metadata": meta, **ready})) == c.NODE_LOST
    # Deleted for good: the last state seen keeps the verdict.
    gone = verdict(gang(), [dataclasses_replace(info, exists=False), node("n2")])
    assert (gone.kind, gone.reason) == (Kind.PREEMPTED, c.KARPENTER_DISRUPTION)


def test_kubelet_critical_pod_preemption_is_its_own_reason_not_a_shutdown() -> None:
    """tests/fixtures/signals/critical-preemption.yaml (kubernetes/kubernetes
    pkg/kubelet/preemption/preemption.go): pod Failed/Preempting, DisruptionTarget
    TerminationByKubelet, exit 143; the node stays Ready."""
    pods = gang()
    pods[0] = pod(
        "m",
        node_name="n1",
        phase="Failed",
        exit_code=143,
        disruption=traces.TERMINATION_BY_KUBELET,
        pod_reason="Preempting",
    )
    v = verdict(pods, [node("n1"), node("n2")])
    assert (v.kind, v.reason, v.node) == (Kind.PREEMPTED, signals.KUBELET_PREEMPTION, "n1")


def test_signals_are_a_bounded_set() -> None:
    assert len(set(c.SIGNAL_PRIORITY)) == len(c.SIGNAL_PRIORITY) == 27  # peer-lost added
    assert all(s == s.lower() and " " not in s and "_" not in s for s in c.SIGNAL_PRIORITY)


def test_a_crashed_pod_deleted_afterwards_is_still_a_failure() -> None:
    crashed = pod(
        "w", node_name="n2", master=False, phase="Failed", exit_code=137, term_reason="OOMKilled"
    )
    v = verdict(gang()[:1], deleted_pods=[crashed])
    assert (v.kind, v.reason) == (Kind.FAILED, "OOMKilled")


def test_unreachable_node_is_lost_only_after_the_grace() -> None:
    flaky = NodeInfo("n2", True, {}, (), "Unknown", "", at(-10))
    v = verdict(gang(), [node("n1"), flaky], node_lost_grace_seconds=30)
    assert v.kind is Kind.RUNNING and v.until == at(20)
    v = verdict(gang(), [node("n1"), flaky], now=at(21), node_lost_grace_seconds=30)
    assert (v.kind, v.reason) == (Kind.PREEMPTED, c.NODE_LOST)
    deleted = NodeInfo("n2", False, {}, (), "Unknown", "", at(-1))
    v = verdict(gang(), [node("n1"), deleted], node_lost_grace_seconds=30)
    assert (v.kind, v.reason) == (Kind.PREEMPTED, c.NODE_LOST)
