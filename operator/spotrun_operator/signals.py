"""Interruption signals and what nodes say about them (pure).

The signal names are a bounded set: they are label values of
``spotrun_preemptions_total`` and values of ``status.lastPreemption.signal``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from spotrun_operator.common import LABEL_INSTANCE_TYPE, LABEL_ZONE, parse_time

SPOT_INTERRUPTION: Final = "spot-interruption"
REBALANCE: Final = "rebalance-recommendation"
ASG_TERMINATION: Final = "asg-termination"
KARPENTER_DISRUPTION: Final = "karpenter-disruption"
NODE_SHUTDOWN: Final = "node-shutdown"
NODE_LOST: Final = "node-lost"
NODE_PRESSURE: Final = "node-pressure"
EVICTION: Final = "eviction"
TAINT_EVICTION: Final = "taint-eviction"
SCHEDULER_PREEMPTION: Final = "scheduler-preemption"
DISRUPTION: Final = "disruption"
POD_DELETED: Final = "pod-deleted"
POD_REPLACED: Final = "pod-replaced"
SIGTERM: Final = "sigterm"

# Taints that announce the end of a node, and the signal each one means.
INTERRUPTION_TAINTS: Final[Mapping[str, str]] = {
    "aws-node-termination-handler/spot-itn": SPOT_INTERRUPTION,
    "aws-node-termination-handler/asg-lifecycle-termination": ASG_TERMINATION,
    "karpenter.sh/disrupted": KARPENTER_DISRUPTION,
    "aws-node-termination-handler/rebalance-recommendation": REBALANCE,
}
UNREACHABLE_TAINT: Final = "node.kubernetes.io/unreachable"
# Karpenter v1 deletes the NodeClaim of a node it disrupts, so the Node gets its
# deletionTimestamp, held by this finalizer, before the karpenter.sh/disrupted taint
# (kubernetes-sigs/karpenter pkg/apis/v1/labels.go TerminationFinalizer;
# pkg/controllers/node/termination/controller.go; tests/fixtures/signals/karpenter.yaml).
KARPENTER_TERMINATION_FINALIZER: Final = "karpenter.sh/termination"

# Stronger evidence first: a taint names the cause, a vanished pod only hints at one.
SIGNAL_PRIORITY: Final = (
    SPOT_INTERRUPTION,
    ASG_TERMINATION,
    KARPENTER_DISRUPTION,
    REBALANCE,
    NODE_SHUTDOWN,
    NODE_LOST,
    NODE_PRESSURE,
    TAINT_EVICTION,
    SCHEDULER_PREEMPTION,
    EVICTION,
    DISRUPTION,
    POD_DELETED,
    POD_REPLACED,
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
    finalizers: tuple[str, ...] = ()

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
        finalizers=tuple(str(f) for f in meta.get("finalizers") or []),
    )


def node_signal(
    node: NodeInfo,
    restart_on_rebalance: bool = False,
    now: dt.datetime | None = None,
    lost_grace_seconds: float = 0.0,
) -> str | None:
    """The interruption a node announces, if any.

    A node that stopped reporting (Ready=Unknown) counts as lost only after
    ``lost_grace_seconds``: kubelets (and kwok) miss heartbeats under load and come back,
    and restarting a whole gang for that costs more than waiting. A deleted node is gone."""
    found = [INTERRUPTION_TAINTS[t] for t in node.taints if t in INTERRUPTION_TAINTS]
    if not restart_on_rebalance:
        found = [s for s in found if s != REBALANCE]
    if node.ready == "False" and "shutting down" in node.ready_message:
        found.append(NODE_SHUTDOWN)
    if node.deleting and KARPENTER_TERMINATION_FINALIZER in node.finalizers:
        found.append(KARPENTER_DISRUPTION)  # before its taint lands: Karpenter's own order
    if not node.exists or (
        (node.ready == "Unknown" or UNREACHABLE_TAINT in node.taints)
        and lost_until(node, lost_grace_seconds, now) is None
    ):
        found.append(NODE_LOST)
    return min(found, key=SIGNAL_PRIORITY.index) if found else None


def lost_until(node: NodeInfo, grace: float, now: dt.datetime | None) -> dt.datetime | None:
    """When an unreachable node will count as lost; None when it already does."""
    if grace <= 0 or now is None or node.ready_since is None:
        return None
    until = node.ready_since + dt.timedelta(seconds=grace)
    return until if until > now else None
