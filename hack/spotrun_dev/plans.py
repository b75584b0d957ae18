"""The ordered API writes each real component makes when it takes a node away (pure).

A plan is a list of ``Write``: who writes (``actor``), which call (``call``), and what the
write changes (``changes``). ``inject`` performs the writes in order; unit tests compare a
plan, rendered with ``render``, with the fixture transcribed from the component's source
(tests/fixtures/signals/*.yaml), and the e2e compares what the apiserver's watch saw with
the same fixture. The builders per component live in ``plans_aws`` and ``plans_k8s``.

Change vocabulary (one key per change):
  taint_added {key, value?, effect}   taint_removed {key}      label_added {key, value}
  cordoned true                       node_deleting true       finalizer_removed <name>
  node_deleted true                   conditions [{type, status, reason, message}]
  evicted {gracePeriodSeconds}       (every pod on the node, through the Eviction API)
  drained_by {terminationGracePeriod} (Karpenter: evict, or force-delete what cannot fit)
  pod_status {phase, reason, message, disruptionTarget, exitCode}
  kubelet_stops true                  (the instance is gone: no more heartbeats)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Mode = Literal["imds", "queue"]
MODES: Final[tuple[Mode, ...]] = ("imds", "queue")

# Timing of a write relative to the one before it (``Write.after``).
AFTER_PREVIOUS: Final = "previous"  # as soon as the previous write returned
AFTER_NOTICE: Final = "notice"  # when the interruption notice runs out
AFTER_GRACE: Final = "node-monitor-grace-period"  # the node lifecycle controller's grace

# Well-known keys (k8s.io/api core/v1 well_known_taints.go and well_known_labels.go).
EXCLUDE_LB_LABEL: Final = "node.kubernetes.io/exclude-from-external-load-balancers"
UNREACHABLE: Final = "node.kubernetes.io/unreachable"
NOT_READY: Final = "node.kubernetes.io/not-ready"
OUT_OF_SERVICE: Final = "node.kubernetes.io/out-of-service"
CCM_SHUTDOWN: Final = "node.cloudprovider.kubernetes.io/shutdown"
MEMORY_PRESSURE: Final = "node.kubernetes.io/memory-pressure"

# The taint value NTH writes is its event id cut to a label value's 63 characters
# (aws/aws-node-termination-handler pkg/node/node.go, maxTaintValueLength).
MAX_TAINT_VALUE: Final = 63


@dataclass(frozen=True)
class Write:
    """One API write (or one cloud action) of a real component."""

    actor: str
    call: str
    changes: tuple[Mapping[str, Any], ...]
    after: str = AFTER_PREVIOUS
    obj: str = "node"  # node | pods (every pod on the node)

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "actor": self.actor,
            "call": self.call,
            "object": self.obj,
            "changes": [dict(c) for c in self.changes],
        }
        if self.after != AFTER_PREVIOUS:
            out["after"] = self.after
        return out


@dataclass(frozen=True)
class Options:
    """Everything a plan depends on besides the signal, so plans stay pure."""

    mode: Mode = "imds"
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    seed: str = field(default_factory=lambda: uuid.uuid4().hex)
    # NTH's excludeFromLoadBalancers (chart default false; the brief's NTH labels nodes).
    exclude_from_lb: bool = True
    # Play the node lifecycle controller's writes at once instead of waiting its grace.
    play_node_lifecycle: bool = True
    # Karpenter NodePool/NodeClaim terminationGracePeriod: pods whose own grace does not
    # fit in what is left of it are force-deleted instead of evicted (None: never).
    termination_grace_period: int | None = None


def render(plan: list[Write]) -> list[dict[str, Any]]:
    return [w.render() for w in plan]


def taint(key: str, effect: str, value: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"key": key, "effect": effect}
    if value is not None:
        t["value"] = value
    return t


def taint_value(event_id: str) -> str:
    return event_id[:MAX_TAINT_VALUE]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hex_of(text: str) -> str:
    """Go's ``fmt.Sprintf("%x", s)`` of a string: the hex of its bytes."""
    return text.encode().hex()


def unix(now: dt.datetime) -> str:
    return str(int(now.timestamp()))


# --- building blocks shared by several components ---------------------------------------


def evict(actor: str, grace: int | str | None = None) -> Write:
    """A drain through the Eviction API; ``grace`` None keeps the pod's own period,
    ``"min(pod,N)"`` caps it at N seconds."""
    return Write(
        actor,
        "POST pods/eviction",
        ({"evicted": {"gracePeriodSeconds": grace}},),
        obj="pods",
    )


def cordon(actor: str, call: str = "PATCH node") -> Write:
    return Write(actor, call, ({"cordoned": True},))


def instance_dies(actor: str, after: str) -> Write:
    return Write(actor, "terminate instance", ({"kubelet_stops": True},), after=after)


def node_lifecycle_unknown(opts: Options) -> list[Write]:
    """kube-controller-manager's node lifecycle controller once the heartbeats stop
    (kubernetes/kubernetes pkg/controller/nodelifecycle/node_lifecycle_controller.go,
    tryUpdateNodeHealth, then doNoScheduleTaintingPass and doNoExecuteTaintingPass)."""
    after = AFTER_PREVIOUS if opts.play_node_lifecycle else AFTER_GRACE
    conds = [
        {
            "type": t,
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
        }
        for t in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
    ]
    actor = "kube-controller-manager/node-lifecycle"
    return [
        Write(actor, "PUT node/status", ({"conditions": conds},), after=after),
        Write(actor, "PATCH node", ({"taint_added": taint(UNREACHABLE, "NoSchedule")},)),
        Write(actor, "PATCH node", ({"taint_added": taint(UNREACHABLE, "NoExecute")},)),
    ]


def ccm_deletes_node() -> Write:
    """The cloud controller manager deletes the Node of an instance that no longer exists
    (kubernetes/cloud-provider controllers/nodelifecycle/node_lifecycle_controller.go,
    MonitorNodes: NotReady and !exists -> Nodes().Delete)."""
    return Write("cloud-controller-manager", "DELETE node", ({"node_deleted": True},))


def ccm_shutdown_taint() -> Write:
    """The CCM taints a NotReady Node whose instance is stopped, not gone (same function:
    exists and shutdown -> AddOrUpdateTaintOnNode(ShutdownTaint), NoSchedule, no value)."""
    return Write(
        "cloud-controller-manager",
        "PATCH node",
        ({"taint_added": taint(CCM_SHUTDOWN, "NoSchedule")},),
    )


def death(actor: str, after: str, opts: Options, *, stopped: bool = False) -> list[Write]:
    """The instance terminates (or stops), the node goes NotReady, the CCM reacts."""
    tail = ccm_shutdown_taint() if stopped else ccm_deletes_node()
    return [instance_dies(actor, after), *node_lifecycle_unknown(opts), tail]
