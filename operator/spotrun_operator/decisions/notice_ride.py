"""Training through a spot interruption notice: with ``--train-through-notice``, NTH's
spot-itn taint on a node of the running gang asks for the replacement at once; the gang
trains on and moves (a graceful stop, a preemption) once the replacement is warm, or when
the notice leaves only the stop margin, whichever comes first (pure).

EC2 terminates a spot instance two minutes after its interruption notice (EC2 User
Guide, "Spot Instance interruption notices"). Stopping the gang at the notice, as spotrun
does by default and Kubeflow's restart does through NTH's drain, leaves it idle from the
notice until its replacement is provisioned, has pulled the image and has started: the
whole provisioning delay. Here the two minutes are spent training instead, and the gang
pays only the move (stop, start, load) once the replacement holds the run's image, the
way ``--replace-on-rebalance`` moves on a recommendation (``rebalance.replacement_ready``).

NTH drains the node at the notice (pkg/node/node.go CordonAndDrain: the Eviction API,
retried for nodeTerminationGracePeriod). The run's PodDisruptionBudget
(``builders.build_gang_pdb``, created with the flag) answers those evictions 429, so the
ranks live on; the operator's own stop deletes the pods, which no budget holds.

Without NTH, Karpenter v1 acts on the same notice from its interruption queue
(aws/karpenter-provider-aws pkg/controllers/interruption/controller.go: a spot
interruption deletes the node's NodeClaim): the Node gets its deletionTimestamp, held by
the ``karpenter.sh/termination`` finalizer, then the ``karpenter.sh/disrupted`` taint, and
its termination controller drains it through the Eviction API too, which the budget holds
the same way (kubernetes-sigs/karpenter pkg/controllers/node/termination/terminator:
a 429 is retried). Karpenter deletes a node carrying spotrun's pods for an interruption,
an expiry or a user's delete (the pods' ``karpenter.sh/do-not-disrupt`` keeps drift and
consolidation away): each is ridden like NTH's taint, with the same margin. An instance
already shutting down or lost is never held: only the notice's marks are hidden.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping

from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt
from spotrun_operator.decisions import rebalance
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.facts.common import fmt_time, parse_time, pod_node
from spotrun_operator.facts.signals import (
    KARPENTER_TERMINATION_FINALIZER,
    TAINT_KARPENTER_DISRUPTED,
    TAINT_SPOT_ITN,
    NodeInfo,
)

# EC2 terminates (or stops) a spot instance two minutes after its interruption notice.
SPOT_NOTICE_SECONDS = 120.0


# The marks of a notice that the held view hides while the gang trains through it.
NOTICE_TAINTS = frozenset({TAINT_SPOT_ITN, TAINT_KARPENTER_DISRUPTED})


def karpenter_terminating(node: NodeInfo) -> bool:
    """Karpenter deletes the node (its NodeClaim is gone) and its termination finalizer
    still holds the Node: the instance is alive and being drained."""
    return node.deleting and KARPENTER_TERMINATION_FINALIZER in node.finalizers


def noticed(node: NodeInfo) -> bool:
    """NTH's spot-itn taint, or Karpenter terminating the node."""
    return TAINT_SPOT_ITN in node.taints or karpenter_terminating(node)


def noticed_nodes(d: Draft, n: int) -> list[str]:
    """Nodes of attempt ``n``'s pods that got a notice (:func:`noticed`)."""
    names = sorted({str(pod_node(p)) for p in d.pods_of(n) if pod_node(p)})
    return [x for x in names if (node := d.obs.nodes.get(x)) and noticed(node)]


def unnoticed(node: NodeInfo) -> NodeInfo:
    """``node`` as it was before its notice: without the notice's taints and, for
    Karpenter's, not being deleted (the finalizer keeps the object; it still exists)."""
    taints = tuple(t for t in node.taints if t not in NOTICE_TAINTS)
    if karpenter_terminating(node):
        return dataclasses.replace(
            node, taints=taints, exists=True, deleting=False, deleting_since=None
        )
    return dataclasses.replace(node, taints=taints)


def stop_by(d: Draft, entry: Attempt) -> dt.datetime | None:
    """The latest moment the gang may still stop gracefully: the first sight of the notice
    + 120 s - the stop margin (at least twice the measured save stall)."""
    since = parse_time(entry.notice_since)
    if since is None:
        return None
    stall = d.progress.checkpoint_stall_seconds if d.progress else None
    margin = max(d.cfg.notice_stop_margin_seconds, 2 * (stall or 0.0))
    return since + dt.timedelta(seconds=SPOT_NOTICE_SECONDS - margin)


def _eligible(d: Draft, n: int, entry: Attempt) -> bool:
    """Attempt ``n`` runs (its job exists, no outcome) on a noticed node, and the operator
    trains through notices."""
    if not d.cfg.train_through_notice or entry.outcome is not None:
        return False
    return n in d.obs.jobs and bool(noticed_nodes(d, n))


def riding(d: Draft, n: int, entry: Attempt) -> bool:
    """Attempt ``n`` trains through a notice now: eligible, and the stop margin not reached
    (a notice first seen in this reconcile has its whole two minutes ahead)."""
    if not _eligible(d, n, entry):
        return False
    end = stop_by(d, entry)
    return end is None or d.now < end


def held_nodes(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> Mapping[str, NodeInfo]:
    """The nodes as the verdict on attempt ``n`` sees them: while the gang trains through a
    notice and its replacement is not ready, the noticed nodes as they were before it
    (:func:`unnoticed`: the notice is not acted on yet); otherwise as observed."""
    nodes = d.obs.nodes
    if not riding(d, n, entry) or rebalance.replacement_ready(d, spec, entry):
        return nodes
    held = set(noticed_nodes(d, n))
    return {name: unnoticed(info) if name in held else info for name, info in nodes.items()}


def warm_move(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> bool:
    """Attempt ``n`` is moved onto a replacement that is already warm (a rebalance
    recommendation or a notice it trains through): its next attempt needs no backoff."""
    moving = rebalance.replacing(d, n, entry) or riding(d, n, entry)
    return moving and rebalance.replacement_ready(d, spec, entry)


def track(d: Draft, n: int, entry: Attempt) -> None:
    """Record when the notice was first seen (``noticeSince``: the stop margin counts from
    it, also across operator restarts), say once what the run does, and requeue by the
    next capacity poll or the stop margin, whichever is first."""
    if not _eligible(d, n, entry):
        return
    if entry.notice_since is None:
        entry = d.update(n, notice_since=fmt_time(d.now))
    end = stop_by(d, entry)
    assert end is not None
    for node in noticed_nodes(d, n):
        d.event(
            "Warning",
            "SpotInterruptionNotice",
            f"attempt {n}: node {node} {_notice_text(d, node)}; training through it: "
            "asking for a replacement node, the gang moves to it once it holds the run's "
            f"image, or stops gracefully at {fmt_time(end)} at the latest",
            key=f"notice-ride/{n}/{node}",
        )
    left = (end - d.now).total_seconds()
    if left > 0:
        d.requeue(min(d.cfg.capacity_poll_seconds, left))


def _notice_text(d: Draft, name: str) -> str:
    node = d.obs.nodes.get(name)
    if node is not None and TAINT_SPOT_ITN not in node.taints:
        return "is being terminated by Karpenter (a spot interruption notice)"
    return "got a spot interruption notice"
