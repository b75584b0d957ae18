"""Capacity requests: the nodes the next attempt lacks are asked of the cluster's
autoscaler at once (pure: actions and status only).

An attempt's PyTorchJob is created only once its whole gang can be placed
(:func:`elasticity.unplaceable`), so while it waits the run has no pod an autoscaler could
act on. Cluster Autoscaler and Karpenter launch nodes for pending pods only: a node group
at zero (docs/eks.md) would never grow for the first attempt, and a lost spot node would be
replaced only by a group that keeps a count (an ASG), once the instance has ended. So while
the next attempt lacks nodes, the Deployment ``<run>-capacity`` holds one pending
placeholder per missing node: the warm spares' pod (priority class spotrun-spare, the run's
image, pulled where it lands), kept off the nodes the attempt already counts on, so that
each asks for a node of its own. It is asked from the moment the attempt before it ended
(a spot notice, not the instance's end: the replacement's launch overlaps the gang's
graceful stop) until the attempt's PyTorchJob is created; then the attempt's pods take the
new nodes (preempting the placeholders there) and the Deployment goes.

A placeholder already bound to a node that fits keeps its place: the count is those plus
the nodes still missing, so a scale-down (the ReplicaSet deletes unbound pods first) never
drops one that holds a node the attempt will use.
"""

from __future__ import annotations

from dataclasses import dataclass

from spotrun_api.enums import Phase
from spotrun_api.naming import job_name
from spotrun_api.spares import SparesStatus
from spotrun_api.spec import TrainingRunSpec
from spotrun_operator.decisions import notice_ride, rebalance
from spotrun_operator.decisions.children import avoided_nodes
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.elasticity import (
    attempt_capacity,
    attempt_size,
    nodes_fitting,
    pod_needs,
)
from spotrun_operator.facts.common import (
    SPARE_PRIORITY_CLASS,
    capacity_requests_name,
    is_capacity_request,
    pod_meta,
    pod_node,
)
from spotrun_operator.model.plan import ApplySpares, CreateJob, DeleteSpares
from spotrun_operator.model.spares import build_capacity_requests_deployment


@dataclass(frozen=True)
class Lack:
    """Attempt ``attempt`` (not created yet, or waiting) asks for ``nodes`` nodes of
    ``capacity_type``."""

    attempt: int
    nodes: int
    capacity_type: str


def lacking_attempt(d: Draft, spec: TrainingRunSpec, phase: Phase) -> Lack | None:
    """The attempt whose nodes may be missing now: the live one while it waits without a
    PyTorchJob for its gang to fit, or the one after a live attempt that ended and will be
    followed (a preemption from its notice on, a failure in its backoff), or the one after
    a live attempt on a node with a rebalance recommendation (``rebalance.replacing``) or
    one training through a spot interruption notice (``notice_ride.riding``).
    None for a run that is over, suspended, queued through Kueue (Kueue admits by quota and
    can provision by itself) or blind to the fleet."""
    if spec.suspend or spec.queue_name or phase.terminal or phase is Phase.SUSPENDED:
        return None
    live = d.status.attempt or 0
    entry = d.entry(live) if live else None
    if entry is None or d.obs.fleet is None:
        return None
    if entry.outcome is None and (
        rebalance.replacing(d, live, entry) or notice_ride.riding(d, live, entry)
    ):
        return Lack(live + 1, attempt_size(spec, entry), attempt_capacity(spec, entry))
    if entry.outcome is None:
        name = job_name(d.obs.ref.name, live)
        creating = any(isinstance(a, CreateJob) and a.body["metadata"]["name"] == name
                       for a in d.actions)  # fmt: skip
        if live in d.obs.jobs or creating or not entry.unschedulable_since:
            return None
        capacity = entry.capacity_type or spec.capacity.type.value
        return Lack(live, entry.nodes or spec.nodes, capacity)
    if not entry.outcome.recovering_from:
        return None
    return Lack(live + 1, attempt_size(spec, entry), attempt_capacity(spec, entry))


def plan_capacity_requests(d: Draft, phase: Phase) -> None:
    """Apply ``<run>-capacity`` for the lacking attempt (:func:`ask`), or delete it; draft
    status.spares.requested."""
    spec = d.spec
    lack = lacking_attempt(d, spec, phase) if spec is not None else None
    old = (d.obs.status.spares.requested if d.obs.status.spares else None) or 0
    count = ask(d, spec, lack, old) if spec is not None and lack is not None else 0
    if not count and (old or any(is_capacity_request(p) for p in d.obs.spare_pods)):
        d.actions.append(DeleteSpares(capacity_requests_name(d.obs.ref.name)))
    spares = (d.status.spares or SparesStatus()).model_copy(update={"requested": count or None})
    d.status.spares = None if spares == SparesStatus() else spares


def ask(d: Draft, spec: TrainingRunSpec, lack: Lack, old: int) -> int:
    """Placeholders for ``lack``: one per node it misses, plus those already holding a node
    it fits on. Applies the Deployment when there are any (an event when the count changed
    from ``old``); returns the count."""
    avoid = avoided_nodes(d)
    need = pod_needs(spec, lack.capacity_type, avoid)
    fit = nodes_fitting(d.obs.fleet or {}, need)
    alive = [p for p in d.obs.spare_pods if not pod_meta(p).get("deletionTimestamp")]
    held = {str(pod_node(p)) for p in alive if pod_node(p)}
    missing = max(0, lack.nodes - len(fit))
    count = missing + sum(1 for p in alive if is_capacity_request(p) and pod_node(p) in fit)
    if not count:
        return 0
    # Off the nodes already counted on (they fit and no placeholder holds them): a
    # placeholder there would ask for nothing.
    counted = sorted(set(avoid) | (fit - held))
    body = build_capacity_requests_deployment(
        d.obs.ref, spec, lack.capacity_type, count, counted, d.cfg.pull_images
    )
    d.actions.append(ApplySpares(body))
    if count != old:
        name = capacity_requests_name(d.obs.ref.name)
        d.event(
            "Normal",
            "CapacityRequested",
            f"attempt {lack.attempt} lacks {missing} of {lack.nodes} node(s) "
            f"({need.describe()}): keeping {count} placeholder pod(s) in Deployment {name} "
            f"(PriorityClass {SPARE_PRIORITY_CLASS}) for an autoscaler to launch nodes for",
        )
    return count
