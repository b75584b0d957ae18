"""``spec.elasticity.growBack``: a shrunk attempt makes way for a whole one (pure).

An attempt that runs with fewer nodes than ``spec.nodes`` (it followed a
``CapacityShrink``) trains at a fraction of the run's speed. Growing back costs a restart,
and a restart onto a node that does not hold the run's image yet stops the whole gang for
the image pull (minutes for a multi-GB trainer image). So the nodes it lacks are first
held and warmed by placeholders, the warm spares' own kind (:mod:`spares`): once the
attempt runs shrunk, the spares' Deployment has one more replica per missing node. Those
pods ask for capacity (an autoscaler launches nodes for them, as it does for spares), and
a placeholder runs only once its node is there, fits the gang and holds the image. When
as many run as nodes are missing, the attempt ends with ``CapacityGrow`` (no budget
spent, no backoff: not a loss), its gang stops gracefully and saves, and the next attempt
asks for ``spec.nodes`` (:func:`elasticity.attempt_size`). The placeholders hold the
nodes until that attempt is created and are deleted with it (and, at the lowest
priority, are preempted by its pods if they are still there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spotrun_api.enums import Outcome
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt
from spotrun_operator.decisions.children import avoided_nodes, stop_gang
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.elasticity import PodNeeds, fits, pod_needs
from spotrun_operator.decisions.transitions import record
from spotrun_operator.facts.common import fmt_time, pod_node, pod_warm
from spotrun_operator.facts.signals import NodeInfo


def missing_nodes(spec: TrainingRunSpec | None, entry: Attempt | None) -> int:
    """Nodes the newest attempt ``entry`` lacks and wants placeholders for (0: none): it
    runs shrunk with no outcome yet, or it just ended to grow back (the placeholders hold
    the nodes until the next attempt is created), and spec.elasticity.growBack is on. Only
    once its gang runs: a placeholder created with the gang could take a node the gang
    needs first (the gang would preempt it, after the placeholder's grace)."""
    if spec is None or spec.elasticity is None or not spec.elasticity.grow_back:
        return 0
    if entry is None or not entry.nodes or not entry.started_at:
        return 0
    if entry.outcome not in (None, Outcome.CAPACITY_GROW):
        return 0
    return max(0, spec.nodes - entry.nodes)


def held_nodes(
    spare_pods: Sequence[Mapping[str, Any]],
    fleet: Mapping[str, NodeInfo],
    need: PodNeeds,
    taken: set[str],
) -> list[str]:
    """The nodes a running placeholder holds that a pod of the gang fits on and the
    attempt itself does not use (sorted, each once)."""
    held = set()
    for pod in spare_pods:
        node = str(pod_node(pod) or "")
        info = fleet.get(node)
        if pod_warm(pod) and info is not None and node not in taken and fits(info, need):
            held.add(node)
    return sorted(held)


def grow_if_held(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> None:
    """Running attempt ``n`` is shrunk: end it once placeholders hold every node it lacks
    (see the module); until then a placeholder's change wakes the run."""
    missing = missing_nodes(spec, entry)
    if not missing:
        return
    capacity = entry.capacity_type or spec.capacity.type.value
    need = pod_needs(spec, capacity, avoided_nodes(d))
    taken = {str(pod_node(p)) for p in d.pods_of(n) if pod_node(p)}
    held = held_nodes(d.obs.spare_pods, d.obs.fleet or d.obs.nodes, need, taken)
    if len(held) < missing:  # status.spares and the SparesUpdated event say why
        return
    msg = (
        f"attempt {n + 1} runs with {spec.nodes} nodes again: warm placeholders hold "
        f"{', '.join(held[:missing])} with the run's image; attempt {n} (with "
        f"{entry.nodes}) stops gracefully and saves, no budget spent"
    )
    record(d, n, Outcome.CAPACITY_GROW, "CapacityReturned", msg, next_attempt_at=fmt_time(d.now))
    d.event("Normal", "CapacityGrow", msg)
    d.say(msg)
    stop_gang(d, n)
