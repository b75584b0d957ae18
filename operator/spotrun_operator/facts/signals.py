"""Interruption signals and what nodes say about them (pure).

The signal names are a bounded set: they are label values of
``spotrun_preemptions_total`` and values of ``status.lastPreemption.signal``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from spotrun_operator.facts.common import (
    GPU_RESOURCE,
    LABEL_INSTANCE_TYPE,
    LABEL_ZONE,
    parse_time,
)

SPOT_INTERRUPTION: Final = "spot-interruption"
REBALANCE: Final = "rebalance-recommendation"
ASG_TERMINATION: Final = "asg-termination"
# NTH, an EC2 scheduled event (instance-stop, -reboot, system-maintenance): its own taint,
# value the EC2 event id (aws/aws-node-termination-handler pkg/node/node.go
# TaintScheduledMaintenance; tests/fixtures/signals/scheduled-maintenance.yaml).
SCHEDULED_MAINTENANCE: Final = "scheduled-maintenance"
# NTH queue mode, an EC2 instance state change: no taint at all, only the
# exclude-from-external-load-balancers label, a cordon and a drain (aws/aws-node-termination-
# handler pkg/interruptionevent/draincordon/handler.go, pkg/node/node.go CordonAndDrain;
# tests/fixtures/signals/state-change.yaml).
INSTANCE_STATE_CHANGE: Final = "instance-state-change"
# EKS managed node group with spot capacity: Capacity Rebalancing cordons and drains the old
# node, with no taint (Amazon EKS User Guide, managed-node-groups.html, Spot;
# tests/fixtures/signals/mng-rebalance.yaml).
MNG_REBALANCE: Final = "mng-rebalance"
KARPENTER_DISRUPTION: Final = "karpenter-disruption"
# Cluster Autoscaler scale-down (kubernetes/autoscaler cluster-autoscaler/utils/taints/
# taints.go ToBeDeletedTaint; tests/fixtures/signals/ca-scale-down.yaml).
CA_SCALE_DOWN: Final = "ca-scale-down"
# GKE spot/preemptible VM: graceful node shutdown on a node labelled gke-spot/gke-preemptible
# (cloud.google.com kubernetes-engine/docs/concepts/spot-vms; tests/fixtures/signals/
# gke-preempt.yaml), or the deprecated GoogleCloudPlatform/k8s-node-termination-handler taint.
GKE_PREEMPTION: Final = "gke-preemption"
# AKS spot pool: node auto-drain taints, cordons and drains on the Preempt scheduled event
# (learn.microsoft.com azure/aks/node-auto-drain, spot-node-pool;
# tests/fixtures/signals/aks-evict.yaml).
AKS_SPOT_EVICTION: Final = "aks-spot-eviction"
# Non-graceful node shutdown (kubernetes/kubernetes pkg/controller/tainteviction,
# pkg/controller/podgc gc_controller.go gcTerminating; tests/fixtures/signals/out-of-service.yaml).
OUT_OF_SERVICE: Final = "out-of-service"
NODE_SHUTDOWN: Final = "node-shutdown"
# The cloud controller manager found the instance stopped (kubernetes/cloud-provider
# controllers/nodelifecycle/node_lifecycle_controller.go MonitorNodes; api/well_known_taints.go
# TaintNodeShutdown; tests/fixtures/signals/_shared.yaml ccm-shutdown-taint).
CLOUD_SHUTDOWN: Final = "cloud-shutdown"
NODE_LOST: Final = "node-lost"
NODE_PRESSURE: Final = "node-pressure"
# The kubelet evicted the pod to admit a critical pod (kubernetes/kubernetes
# pkg/kubelet/preemption/preemption.go: pod reason "Preempting", DisruptionTarget
# TerminationByKubelet): the node stays Ready, so it is not a node shutdown.
KUBELET_PREEMPTION: Final = "kubelet-preemption"
EVICTION: Final = "eviction"
TAINT_EVICTION: Final = "taint-eviction"
SCHEDULER_PREEMPTION: Final = "scheduler-preemption"
DISRUPTION: Final = "disruption"
# A trainer rank saw a peer of its gang stop heartbeating and exited EXIT_PEER_LOST
# (spotrun_api contract; docs/trainer.md "Lost peers"): the gang is broken now, before any
# node condition shows it. The cause is unnamed: a node's own evidence, once it shows, wins.
PEER_LOST: Final = "peer-lost"
POD_REPLACED: Final = "pod-replaced"
# A pod Failed with no container exit at all and no known reason (the kubelet rejected it at
# admission, or the pod GC failed it): outside the application, cause unnamed.
POD_STOPPED: Final = "pod-stopped"
# The pod's activeDeadlineSeconds ran out: the kubelet stops it, pod reason DeadlineExceeded
# (kubernetes/kubernetes pkg/kubelet/active_deadline.go).
DEADLINE_EXCEEDED: Final = "deadline-exceeded"
# Someone deleted the pod without the Eviction API (no DisruptionTarget), nothing on its node.
POD_DELETED: Final = "pod-deleted"
# The container exited 143 (SIGTERM, checkpoint saved), nothing deleted or evicted it.
SIGTERM: Final = "sigterm"
# Someone other than spotrun deleted the live attempt's PyTorchJob (its gang is stopped).
JOB_DELETED: Final = "job-deleted"

# Signals that stop an attempt without spending either budget (docs/signals.md): neither the
# infrastructure (no evidence of it) nor the application (it exited on SIGTERM after a
# checkpoint, the trainer's contract) is to blame.
NO_BUDGET_SIGNALS: Final = frozenset({DEADLINE_EXCEEDED, POD_DELETED, JOB_DELETED, SIGTERM})

TAINT_SPOT_ITN: Final = "aws-node-termination-handler/spot-itn"
TAINT_REBALANCE: Final = "aws-node-termination-handler/rebalance-recommendation"
# aws/aws-node-termination-handler pkg/node/node.go (ScheduledMaintenanceTaint).
TAINT_SCHEDULED_MAINTENANCE: Final = "aws-node-termination-handler/scheduled-maintenance"
TAINT_KARPENTER_DISRUPTED: Final = "karpenter.sh/disrupted"
# Karpenter before v1 (kubernetes-sigs/karpenter v0.37.0 pkg/apis/v1beta1/taints.go
# DisruptionNoScheduleTaint, value "disrupting").
TAINT_KARPENTER_DISRUPTION_V1BETA1: Final = "karpenter.sh/disruption"
# kubernetes/autoscaler cluster-autoscaler/utils/taints/taints.go ToBeDeletedTaint; the soft
# DeletionCandidateOfClusterAutoscaler (PreferNoSchedule) only marks a candidate: ignored.
TAINT_CA_TO_BE_DELETED: Final = "ToBeDeletedByClusterAutoscaler"
# kubernetes/kubernetes staging/src/k8s.io/api/core/v1/well_known_taints.go
# TaintNodeOutOfService.
TAINT_OUT_OF_SERVICE: Final = "node.kubernetes.io/out-of-service"
# kubernetes/cloud-provider api/well_known_taints.go TaintNodeShutdown.
TAINT_CLOUD_SHUTDOWN: Final = "node.cloudprovider.kubernetes.io/shutdown"
# GoogleCloudPlatform/k8s-node-termination-handler (deprecated) taints a node whose VM is
# about to be preempted.
TAINT_GKE_IMPENDING: Final = "cloud.google.com/impending-node-termination"
# AKS node auto-drain (learn.microsoft.com azure/aks/node-auto-drain; the effect is not
# documented).
TAINT_AKS_DRAIN: Final = "remediator.kubernetes.azure.com/unschedulable"

# Taints that announce the end of a node by themselves, and the signal each one means.
INTERRUPTION_TAINTS: Final[Mapping[str, str]] = {
    TAINT_SPOT_ITN: SPOT_INTERRUPTION,
    "aws-node-termination-handler/asg-lifecycle-termination": ASG_TERMINATION,
    TAINT_SCHEDULED_MAINTENANCE: SCHEDULED_MAINTENANCE,
    TAINT_CA_TO_BE_DELETED: CA_SCALE_DOWN,
    TAINT_OUT_OF_SERVICE: OUT_OF_SERVICE,
    TAINT_CLOUD_SHUTDOWN: CLOUD_SHUTDOWN,
    TAINT_GKE_IMPENDING: GKE_PREEMPTION,
}
# Taints that only name the cause of a drain: alone they may still come to nothing (an IMDS
# rebalance recommendation only cordons; Karpenter un-taints when drift or consolidation
# fails, kubernetes-sigs/karpenter pkg/controllers/disruption/queue.go; AKS drains other
# nodes too). Karpenter's count by themselves once the node is being deleted or gone.
DRAIN_TAINTS: Final[Mapping[str, str]] = {
    TAINT_REBALANCE: REBALANCE,
    TAINT_KARPENTER_DISRUPTED: KARPENTER_DISRUPTION,
    TAINT_KARPENTER_DISRUPTION_V1BETA1: KARPENTER_DISRUPTION,
}
UNREACHABLE_TAINT: Final = "node.kubernetes.io/unreachable"
HARD_TAINT_EFFECTS: Final = ("NoSchedule", "NoExecute")
# Karpenter v1 deletes the NodeClaim of a node it disrupts, so the Node gets its
# deletionTimestamp, held by this finalizer, before the karpenter.sh/disrupted taint
# (kubernetes-sigs/karpenter pkg/apis/v1/labels.go TerminationFinalizer;
# pkg/controllers/node/termination/controller.go; tests/fixtures/signals/karpenter.yaml).
KARPENTER_TERMINATION_FINALIZER: Final = "karpenter.sh/termination"
# NTH labels a node it drains (value aws-node-termination-handler), Karpenter one it
# terminates (value karpenter) (aws/aws-node-termination-handler pkg/node/node.go
# CordonAndDrain; kubernetes/api core/v1 well_known_labels.go LabelNodeExcludeBalancers).
LABEL_EXCLUDE_LB: Final = "node.kubernetes.io/exclude-from-external-load-balancers"
NTH_LB_VALUE: Final = "aws-node-termination-handler"
# Capacity labels: EKS managed node groups (eks.amazonaws.com/capacityType=SPOT), GKE
# (cloud.google.com/gke-spot, gke-preemptible = "true"), AKS
# (kubernetes.azure.com/scalesetpriority=spot).
LABEL_EKS_CAPACITY: Final = "eks.amazonaws.com/capacityType"
GKE_SPOT_LABELS: Final = ("cloud.google.com/gke-spot", "cloud.google.com/gke-preemptible")
LABEL_AKS_PRIORITY: Final = "kubernetes.azure.com/scalesetpriority"

# Stronger evidence first: a taint names the cause, a vanished pod only hints at one.
SIGNAL_PRIORITY: Final = (
    SPOT_INTERRUPTION,
    ASG_TERMINATION,
    SCHEDULED_MAINTENANCE,
    KARPENTER_DISRUPTION,
    GKE_PREEMPTION,
    AKS_SPOT_EVICTION,
    REBALANCE,
    CA_SCALE_DOWN,
    INSTANCE_STATE_CHANGE,
    MNG_REBALANCE,
    OUT_OF_SERVICE,
    NODE_SHUTDOWN,
    CLOUD_SHUTDOWN,
    NODE_LOST,
    NODE_PRESSURE,
    KUBELET_PREEMPTION,
    TAINT_EVICTION,
    SCHEDULER_PREEMPTION,
    EVICTION,
    DISRUPTION,
    PEER_LOST,
    POD_REPLACED,
    POD_STOPPED,
    DEADLINE_EXCEEDED,
    POD_DELETED,
    JOB_DELETED,
    SIGTERM,
)


@dataclass(frozen=True)
class NodeInfo:
    """What matters about a node; ``exists=False`` for a deleted one (last known state)."""

    name: str
    exists: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[str, ...] = ()
    ready: str = "True"  # status of the Ready condition
    ready_message: str = ""
    ready_since: dt.datetime | None = None  # lastTransitionTime of the Ready condition
    deleting: bool = False  # deletionTimestamp set (the object may still exist, finalized)
    deleting_since: dt.datetime | None = None  # its deletionTimestamp
    # The earliest timeAdded of its taints (set for NoExecute taints by the apiserver and
    # the node lifecycle controller; NTH and Karpenter leave it empty).
    tainted_since: dt.datetime | None = None
    finalizers: tuple[str, ...] = ()
    unschedulable: bool = False  # spec.unschedulable: cordoned
    # Taints that keep pods off (NoSchedule, NoExecute) as (key, value, effect).
    hard_taints: tuple[tuple[str, str, str], ...] = ()
    gpus: int = 0  # status.allocatable nvidia.com/gpu

    @property
    def zone(self) -> str:
        return self.labels.get(LABEL_ZONE, "")

    @property
    def instance_type(self) -> str:
        return self.labels.get(LABEL_INSTANCE_TYPE, "")


def node_info(node: Mapping[str, Any], exists: bool = True) -> NodeInfo:
    """NodeInfo from a Node object as JSON (``sanitize_for_serialization`` output)."""
    meta = node.get("metadata") or {}
    ready: Mapping[str, Any] = next(
        (c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
        {},
    )
    return NodeInfo(
        name=str(meta.get("name", "")),
        exists=exists and not meta.get("deletionTimestamp"),
        labels=dict(meta.get("labels") or {}),
        taints=tuple(str(t.get("key")) for t in (node.get("spec") or {}).get("taints") or []),
        ready=str(ready.get("status", "Unknown")),
        ready_message=str(ready.get("message") or ""),
        ready_since=parse_time(ready.get("lastTransitionTime")),
        deleting=bool(meta.get("deletionTimestamp")),
        deleting_since=parse_time(meta.get("deletionTimestamp")),
        tainted_since=min(
            (
                t
                for t in (
                    parse_time(x.get("timeAdded"))
                    for x in (node.get("spec") or {}).get("taints") or []
                )
                if t is not None
            ),
            default=None,
        ),
        finalizers=tuple(str(f) for f in meta.get("finalizers") or []),
        unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
        hard_taints=tuple(
            (str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
            for t in (node.get("spec") or {}).get("taints") or []
            if t.get("effect") in HARD_TAINT_EFFECTS
        ),
        gpus=_count(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)),
    )


def _count(quantity: Any) -> int:
    """An extended resource's quantity (always a whole number) as an int; 0 if unreadable."""
    try:
        return int(str(quantity))
    except ValueError:
        return 0


def _spot(node: NodeInfo) -> tuple[bool, bool]:
    """(GKE spot or preemptible, AKS spot) from the node's capacity labels."""
    gke = any(node.labels.get(k) == "true" for k in GKE_SPOT_LABELS)
    return gke, node.labels.get(LABEL_AKS_PRIORITY) == "spot"


def schedulable(node: NodeInfo) -> bool:
    """The node's own state lets the scheduler bind a new pod there: it exists, is not
    being deleted, is Ready and not cordoned (what a given pod needs: ``elasticity.fits``)."""
    return node.exists and not node.deleting and node.ready == "True" and not node.unschedulable


def shutting_down(node: NodeInfo) -> bool:
    """The kubelet's shutdown manager reports the node NotReady, "node is shutting down"."""
    return node.ready == "False" and "shutting down" in node.ready_message


# Every taint that says a node is going away, also those that alone restart nothing (a
# rebalance recommendation, Karpenter's disrupted taint, AKS's drain): a next attempt
# placed there would be lost with the node (docs/signals.md, "Nodes a next attempt avoids").
GOING_TAINTS: Final = frozenset({*INTERRUPTION_TAINTS, *DRAIN_TAINTS, TAINT_AKS_DRAIN})


def going(node: NodeInfo) -> bool:
    """The node is going away: it carries one of :data:`GOING_TAINTS` (a rebalance
    recommendation included), or it still exists and is shutting down or being deleted.
    A node that is shutting down
    stays schedulable until the node lifecycle controller taints it not-ready; a next
    attempt placed there in that window is lost with it (6 of 99 in a 100-node burst).
    A node NotReady for another reason (still joining, a missed heartbeat) is capacity
    and not avoided: the node lifecycle controller's own taints keep pods off it when it
    stays away. A deleted node takes no pods (kept only when it was tainted, as before)."""
    if GOING_TAINTS.intersection(node.taints):
        return True
    return node.deleting or (node.exists and shutting_down(node))


def shutdown_signal(node: NodeInfo | None) -> str:
    """What a graceful node shutdown is on ``node``: a GKE spot/preemptible VM's shutdown is
    its preemption (ACPI soft-off), any other one a plain node shutdown."""
    return GKE_PREEMPTION if node is not None and _spot(node)[0] else NODE_SHUTDOWN


def _taint_signals(node: NodeInfo, restart_on_rebalance: bool) -> tuple[list[str], list[str]]:
    """(signals the node's taints announce by themselves, signals they only name)."""
    gke, aks = _spot(node)
    alone = [INTERRUPTION_TAINTS[t] for t in node.taints if t in INTERRUPTION_TAINTS]
    named = [DRAIN_TAINTS[t] for t in node.taints if t in DRAIN_TAINTS]
    if aks and TAINT_AKS_DRAIN in node.taints:
        alone.append(AKS_SPOT_EVICTION)  # the Preempt event: at least 30 s of notice
    if restart_on_rebalance and REBALANCE in named:
        alone.append(REBALANCE)
    if KARPENTER_DISRUPTION in named and (node.deleting or not node.exists):
        alone.append(KARPENTER_DISRUPTION)  # deleted with it: the command went ahead
    if gke and CLOUD_SHUTDOWN in alone:
        alone.append(GKE_PREEMPTION)
    return alone, named


def node_signal(
    node: NodeInfo,
    restart_on_rebalance: bool = False,
    now: dt.datetime | None = None,
    lost_grace_seconds: float = 0.0,
) -> str | None:
    """The interruption a node announces by itself, if any.

    A node that stopped reporting (Ready=Unknown) counts as lost only after
    ``lost_grace_seconds``: kubelets (and kwok) miss heartbeats under load and come back,
    and restarting a whole gang for that costs more than waiting. A deleted node is gone."""
    found, _ = _taint_signals(node, restart_on_rebalance)
    if shutting_down(node):
        found.append(shutdown_signal(node))
    if node.deleting and KARPENTER_TERMINATION_FINALIZER in node.finalizers:
        found.append(KARPENTER_DISRUPTION)  # before its taint lands: Karpenter's own order
    if not node.exists or (
        (node.ready == "Unknown" or UNREACHABLE_TAINT in node.taints)
        and lost_until(node, lost_grace_seconds, now) is None
    ):
        found.append(NODE_LOST)
    return min(found, key=SIGNAL_PRIORITY.index) if found else None


def signal_time(node: NodeInfo, sig: str) -> dt.datetime | None:
    """When ``node`` gave ``sig``, by the node's own timestamps (None: it carries none, as
    NTH's and Karpenter's taints do): its Ready transition for a shutdown or a lost node,
    its deletionTimestamp for a deletion, its taints' timeAdded otherwise."""
    if sig in (NODE_LOST, NODE_SHUTDOWN, GKE_PREEMPTION) and node.ready != "True":
        return node.ready_since
    if node.deleting:
        return node.deleting_since
    return node.tainted_since


def drain_cause(node: NodeInfo, restart_on_rebalance: bool = False) -> str | None:
    """What a pod evicted from ``node`` (Eviction API) was drained for, if the node says.

    Taints first (even those that do not count alone: a drain is what they were waiting
    for), then NTH's own drain label with no NTH taint (an EC2 state change), then a cordoned
    EKS managed-node-group spot node (Capacity Rebalancing drains with no taint)."""
    alone, named = _taint_signals(node, restart_on_rebalance)
    if _spot(node)[1] and TAINT_AKS_DRAIN in node.taints:
        named.append(AKS_SPOT_EVICTION)
    found = alone + named
    if found:
        return min(found, key=SIGNAL_PRIORITY.index)
    if node.labels.get(LABEL_EXCLUDE_LB) == NTH_LB_VALUE:
        return INSTANCE_STATE_CHANGE
    if node.unschedulable and node.labels.get(LABEL_EKS_CAPACITY) == "SPOT":
        return MNG_REBALANCE
    return None


def node_text(node: NodeInfo, sig: str) -> str:
    """How ``node`` shows ``sig``, for messages."""
    if sig == NODE_LOST:
        return "deleted" if not node.exists else "not reachable (Ready=Unknown)"
    if sig in (NODE_SHUTDOWN, GKE_PREEMPTION) and node.ready == "False":
        return node.ready_message or "shutting down"
    taints = {**INTERRUPTION_TAINTS, **DRAIN_TAINTS, TAINT_AKS_DRAIN: AKS_SPOT_EVICTION}
    taint = next((t for t in node.taints if taints.get(t) == sig), None)
    if taint:
        return f"tainted {taint}"
    if sig == KARPENTER_DISRUPTION and node.deleting:
        return f"being deleted (finalizer {KARPENTER_TERMINATION_FINALIZER})"
    if sig == INSTANCE_STATE_CHANGE:
        return f"labelled {LABEL_EXCLUDE_LB}={NTH_LB_VALUE} by NTH's drain, no NTH taint"
    if sig == MNG_REBALANCE:
        return f"cordoned and drained ({LABEL_EKS_CAPACITY}=SPOT, no taint)"
    return sig


def lost_until(node: NodeInfo, grace: float, now: dt.datetime | None) -> dt.datetime | None:
    """When an unreachable node will count as lost; None when it already does."""
    if grace <= 0 or now is None or node.ready_since is None:
        return None
    until = node.ready_since + dt.timedelta(seconds=grace)
    return until if until > now else None
