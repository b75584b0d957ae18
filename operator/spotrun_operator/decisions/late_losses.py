"""Nodes of a preempted attempt lost after its verdict (pure).

The verdict names the nodes that showed a signal when it was taken. A second node of the
same gang often goes a moment later (an NTH notice on one, the silent loss of another, a
Karpenter deletion racing NTH): until the next attempt is created, every node of the
attempt's pods that then shows a signal of its own is added to the attempt's record
(``interruptedNodes`` and ``interruptions``), so the record names every node lost. Only the
Node objects are read: the gang's own pods are being stopped by spotrun at that point, so
what they show says nothing about their nodes.
"""

from __future__ import annotations

from spotrun_api.status import Attempt, NodeInterruption
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.facts.common import attempt_of, pod_node
from spotrun_operator.facts.signals import node_signal


def record_late_losses(d: Draft, n: int, entry: Attempt) -> Attempt:
    """Add to attempt ``n``'s record the nodes of its pods that show a signal now."""
    pods = [*d.pods_of(n), *(p for p in d.obs.deleted_pods if attempt_of(p) == n)]
    known = set(entry.interrupted_nodes or ())
    found: dict[str, str] = {}
    for name in sorted({str(pod_node(p)) for p in pods if pod_node(p)} - known):
        node = d.obs.nodes.get(name)
        sig = node and node_signal(
            node,
            d.cfg.restart_on_rebalance,
            d.now,
            d.cfg.node_lost_grace_seconds,
        )
        if sig:
            found[name] = sig
    if not found:
        return entry
    listed = [
        *(entry.interruptions or ()),
        *(NodeInterruption(node=x, signal=s) for x, s in found.items()),
    ]
    return d.update(
        n,
        interrupted_nodes=sorted(known | set(found)),
        interruptions=listed,
    )
