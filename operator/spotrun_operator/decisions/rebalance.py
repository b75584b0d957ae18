"""Replacing a node before it goes: with ``--replace-on-rebalance``, a rebalance
recommendation on a node of the running gang asks for the replacement at once, and the
gang moves when the replacement is warm (pure).

EC2 sends a rebalance recommendation when a spot instance is at elevated risk of
interruption; it "can arrive sooner than the two-minute Spot Instance interruption notice",
or along with it (EC2 User Guide, "EC2 instance rebalance recommendations"). NTH in IMDS
mode only taints and cordons the node
(``aws-node-termination-handler/rebalance-recommendation``). Restarting on the
recommendation alone (``--restart-on-rebalance``) puts the gang on a capacity wait it did
not have to take; ignoring it (the default) leaves the whole wait to the notice. Here the
run instead keeps training and asks an autoscaler for the node it would lack
(``capacity_requests``: a placeholder pod, off the going node and the nodes the gang already
counts on, that pulls the run's image where it lands). Once the next attempt's gang fits
without the going node and every placeholder on a node it fits on runs (its image is
there), the recommendation counts as a notice: the gang stops gracefully with a checkpoint
(a preemption, ``rebalance-recommendation``, never the failure budget) and the next attempt
is placed at once, as on a warm spare. A notice that comes first is handled as always, with
the replacement already on its way. This is EC2 Auto Scaling's Capacity Rebalancing (launch
the replacement, then drain the old instance) for a gang that must move together.
"""

from __future__ import annotations

from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt
from spotrun_operator.decisions.children import avoided_nodes
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.elasticity import (
    attempt_capacity,
    attempt_size,
    nodes_fitting,
    pod_needs,
)
from spotrun_operator.facts.common import pod_node, pod_warm
from spotrun_operator.facts.signals import TAINT_REBALANCE


def rebalanced_nodes(d: Draft, n: int) -> list[str]:
    """Nodes of attempt ``n``'s pods that carry NTH's rebalance-recommendation taint."""
    names = sorted({str(pod_node(p)) for p in d.pods_of(n) if pod_node(p)})
    return [x for x in names if (node := d.obs.nodes.get(x)) and TAINT_REBALANCE in node.taints]


def replacing(d: Draft, n: int, entry: Attempt) -> bool:
    """Attempt ``n`` runs (its job exists, no outcome) on a node with a rebalance
    recommendation, and the operator replaces such nodes before they go."""
    cfg = d.cfg
    if not cfg.replace_on_rebalance or cfg.restart_on_rebalance or entry.outcome is not None:
        return False
    return n in d.obs.jobs and bool(rebalanced_nodes(d, n))


def replacement_ready(d: Draft, spec: TrainingRunSpec, entry: Attempt) -> bool:
    """The attempt after ``entry`` could be placed now without the going nodes, and every
    placeholder (warm spare or capacity request) bound to a node it fits on is Running:
    its pulls are done, so the move costs a restart and no image pull."""
    if d.obs.fleet is None:
        return False
    need = pod_needs(spec, attempt_capacity(spec, entry), avoided_nodes(d))
    fit = nodes_fitting(d.obs.fleet, need)
    if len(fit) < attempt_size(spec, entry):
        return False
    return all(pod_warm(p) for p in d.obs.spare_pods if pod_node(p) in fit)


def move_now(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> bool:
    """Whether the rebalance recommendation on attempt ``n``'s nodes counts as a notice
    now: always with ``--restart-on-rebalance``; with ``--replace-on-rebalance`` once the
    replacement is ready."""
    if d.cfg.restart_on_rebalance:
        return True
    return replacing(d, n, entry) and replacement_ready(d, spec, entry)
