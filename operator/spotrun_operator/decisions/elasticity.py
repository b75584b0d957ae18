"""``spec.elasticity``: an attempt whose gang cannot be placed restarts smaller (pure).

The rule, evaluated on every reconcile of a live attempt that waits for capacity (its
pods Pending with PodScheduled=False, reason Unschedulable, since ``unschedulableSince``):

1. Before ``waitBeforeShrink`` has passed: nothing (look again when it has).
2. How many nodes fit, from what the operator already watches (:attr:`Observed.fleet`):
   the nodes a pod of the attempt could land on (:func:`fits`: exists, Ready, not
   cordoned or being deleted, the attempt's capacity type and an allowed instance type,
   ``nvidia.com/gpu`` allocatable >= gpusPerNode, the labels of
   ``podTemplate.spec.nodeSelector``, every NoSchedule/NoExecute taint tolerated, not
   avoided after an interruption), together with the nodes the attempt's placed pods
   already hold. The operator does not see other workloads' pods: when those nodes would
   take the whole gang and yet pods stay unschedulable, their GPUs are taken, and the
   scheduler's own answer counts instead: how many of the attempt's pods it placed.
3. Fewer than the attempt asks for and at least ``minNodes``: the attempt ends with
   ``CapacityShrink`` (no budget spent, no backoff: not a loss) and the next attempt asks
   for that many (``Attempt.shrinkTo``). Fewer than ``minNodes``: keep waiting.

Only the attempt right after a ``CapacityShrink`` is smaller; any later attempt (after a
preemption, a failure, a suspend, ...) asks for ``spec.nodes`` again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spotrun_api.enums import CapacityType, Outcome
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt
from spotrun_operator.decisions.children import avoided_nodes, stop_gang
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.transitions import record
from spotrun_operator.facts.common import (
    EKS_CAPACITY_VALUES,
    LABEL_EKS_CAPACITY,
    LABEL_INSTANCE_TYPE,
    LABEL_KARPENTER_CAPACITY,
    fmt_time,
    pod_node,
)
from spotrun_operator.facts.signals import NodeInfo, schedulable
from spotrun_operator.judging.classify import Verdict, VerdictKind
from spotrun_operator.model.builders import GPU_TOLERATION

Taint = tuple[str, str, str]  # key, value, effect


@dataclass(frozen=True)
class PodNeeds:
    """What a node must offer a pod of the attempt."""

    capacity_type: str  # spot | on-demand
    instance_types: tuple[str, ...]
    gpus: int
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] | None = None
    avoid: frozenset[str] = frozenset()

    def describe(self) -> str:
        types = ", ".join(self.instance_types)
        return f"{self.capacity_type} {types} with {self.gpus} GPUs, Ready, not cordoned or tainted"


def pod_needs(spec: TrainingRunSpec, capacity_type: str, avoid: Sequence[str]) -> PodNeeds:
    """The needs of a pod of ``spec`` on ``capacity_type`` (the builders' affinity and
    tolerations, plus what ``spec.podTemplate`` adds to them)."""
    pod = spec.pod_template.get("spec")
    pod = pod if isinstance(pod, dict) else {}
    extra = pod.get("tolerations")
    selector = pod.get("nodeSelector")
    return PodNeeds(
        capacity_type=capacity_type,
        instance_types=tuple(spec.capacity.instance_types),
        gpus=spec.gpus_per_node,
        tolerations=(
            *([GPU_TOLERATION] if spec.gpus_per_node else []),
            *(t for t in (extra if isinstance(extra, list) else []) if isinstance(t, dict)),
        ),
        node_selector={str(k): str(v) for k, v in selector.items()}
        if isinstance(selector, dict)
        else None,
        avoid=frozenset(avoid),
    )


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Taint) -> bool:
    """Kubernetes' toleration match: an empty effect matches every effect, ``Exists``
    with no key every key, ``Equal`` (the default) the key and the value."""
    key, value, effect = taint
    for t in tolerations:
        if t.get("effect") and t.get("effect") != effect:
            continue
        tkey = str(t.get("key") or "")
        if (t.get("operator") or "Equal") == "Exists":
            if not tkey or tkey == key:
                return True
        elif tkey == key and str(t.get("value") or "") == value:
            return True
    return False


def fits(node: NodeInfo, need: PodNeeds) -> bool:
    """A pod of the attempt could be scheduled on ``node`` (ignoring other pods on it)."""
    labels = node.labels
    eks = labels.get(LABEL_EKS_CAPACITY) == EKS_CAPACITY_VALUES.get(need.capacity_type)
    capacity = eks or labels.get(LABEL_KARPENTER_CAPACITY) == need.capacity_type
    return (
        schedulable(node)
        and node.name not in need.avoid
        and capacity
        and labels.get(LABEL_INSTANCE_TYPE) in need.instance_types
        and node.gpus >= need.gpus
        and all(labels.get(k) == v for k, v in (need.node_selector or {}).items())
        and all(tolerates(need.tolerations, t) for t in node.hard_taints)
    )


def nodes_fitting(fleet: Mapping[str, NodeInfo], need: PodNeeds) -> set[str]:
    """The nodes of ``fleet`` a pod with ``need`` could be scheduled on (:func:`fits`)."""
    return {name for name, node in fleet.items() if fits(node, need)}


def fitting_nodes(
    fleet: Mapping[str, NodeInfo], pods: Sequence[Mapping[str, Any]], need: PodNeeds, want: int
) -> tuple[int, str]:
    """(how many nodes the next attempt can have, why) for an attempt of ``want`` nodes."""
    placed = [str(pod_node(p)) for p in pods if pod_node(p)]
    free = nodes_fitting(fleet, need)
    count = len(free | set(placed))
    if count < want:
        return count, f"{count} node(s) fit ({need.describe()})"
    return len(placed), (
        f"the scheduler placed {len(placed)} of {want} pods ({count} matching nodes, GPUs "
        "held by other pods)"
    )


def unplaceable(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> Verdict | None:
    """Why attempt ``n``'s gang cannot be placed now (None: every pod has a node).

    Checked before its PyTorchJob is created, so that a gang never starts half placed:
    the pods that were placed would wait for their peers, and the training operator's
    ``init-pytorch`` gives up after its tries (about 3.5 minutes) and fails the job. The
    check counts the nodes a pod of the attempt could land on (:func:`fits`, going nodes
    excluded); it cannot see GPUs other workloads hold, for which
    ``classify`` knows an incomplete gang is capacity, not the application. With no view
    of the fleet (``Observed.fleet`` None) nothing is checked."""
    if d.obs.fleet is None:
        return None
    want = entry.nodes or spec.nodes
    capacity = entry.capacity_type or spec.capacity.type.value
    need = pod_needs(spec, capacity, avoided_nodes(d))
    fit = len(nodes_fitting(d.obs.fleet, need))
    if fit >= want:
        return None
    return Verdict(
        VerdictKind.UNSCHEDULABLE,
        reason="Unschedulable",
        message=f"{fit} of {want} node(s) fit ({need.describe()}); attempt {n}'s PyTorchJob "
        "is created once every pod of its gang can be placed",
    )


def attempt_size(spec: TrainingRunSpec, prev: Attempt | None) -> int:
    """Nodes a new attempt asks for: the shrunk size right after a ``CapacityShrink``,
    else ``spec.nodes`` (so any later restart grows back)."""
    if prev is not None and prev.outcome is Outcome.CAPACITY_SHRINK and prev.shrink_to:
        return min(prev.shrink_to, spec.nodes)
    return spec.nodes


def attempt_capacity(spec: TrainingRunSpec, prev: Attempt | None) -> str:
    """spot or on-demand for the next attempt: on-demand after a fallback; a shrink keeps
    the capacity type of the attempt that shrank; else the spec's."""
    if prev is not None and prev.outcome is Outcome.CAPACITY_SHRINK and prev.capacity_type:
        return prev.capacity_type
    fallback = prev is not None and prev.outcome is Outcome.CAPACITY_FALLBACK
    on_demand = spec.capacity.type is CapacityType.ON_DEMAND or fallback
    return (CapacityType.ON_DEMAND if on_demand else CapacityType.SPOT).value


def size_note(spec: TrainingRunSpec, entry: Attempt | None) -> str:
    """`` with 2 of 4 nodes`` for a shrunk attempt; empty for a full one."""
    nodes = entry.nodes if entry is not None else None
    if nodes is None or nodes >= spec.nodes:
        return ""
    return f" with {nodes} of {spec.nodes} nodes"


# How long the attempt right after a CapacityGrow may wait for the placeholders' nodes
# before it may shrink, whatever waitBeforeShrink says: the scheduler places it within a
# second or two of the placeholders' deletion; a node really gone by then is gone later too.
GROW_BACK_SETTLE_SECONDS = 30.0


def shrink_if_due(
    d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt, v: Verdict, waited: float
) -> None:
    """Attempt ``n`` has waited ``waited`` seconds for capacity: end it so the next one
    runs with the nodes that fit, once waitBeforeShrink has passed (see the module)."""
    wait = spec.shrink_after_seconds
    if spec.elasticity is None or wait is None:
        return
    prev = d.entry(n - 1)
    if prev is not None and prev.outcome is Outcome.CAPACITY_GROW:
        # The gang that grows back takes the nodes the run's own placeholders held; they go
        # as it is created, and until the scheduler has seen them go (it preempts and
        # retries) its pods are Unschedulable. That is no shortage: a shrink now would
        # only make room for the next grow-back, and so on.
        wait = max(wait, GROW_BACK_SETTLE_SECONDS)
    if waited < wait:
        d.requeue(wait - waited)
        return
    want = entry.nodes or spec.nodes
    capacity = entry.capacity_type or spec.capacity.type.value
    need = pod_needs(spec, capacity, avoided_nodes(d))
    fit, why = fitting_nodes(d.obs.fleet or {}, d.pods_of(n), need, want)
    target = min(fit, want - 1)
    least = spec.elasticity.min_nodes
    if target < least:
        d.say(
            f"attempt {n} waits for capacity: {why}, fewer than spec.elasticity.minNodes "
            f"{least}; {v.message}"
        )
        return
    record(
        d,
        n,
        Outcome.CAPACITY_SHRINK,
        "Unschedulable",
        v.message,
        next_attempt_at=fmt_time(d.now),
        shrink_to=target,
    )
    msg = (
        f"attempt {n + 1} runs with {target} of {spec.nodes} nodes: {why}; attempt {n} "
        f"was unschedulable for {waited:.0f}s (spec.elasticity.waitBeforeShrink "
        f"{spec.elasticity.wait_before_shrink}), no budget spent"
    )
    d.event("Warning", "CapacityShrink", msg)
    d.say(msg)
    stop_gang(d, n)
