"""When a pod of an ended attempt no longer holds the next attempt back (fenced restarts).

Until the trainer fenced its checkpoints, the next gang waited until every rank of the
last one was proven dead (terminal, or its node deleted), because a rank on a partitioned
node may still run and write into the run's folder. With fencing (docs/trainer.md, "Fenced
checkpoints") such a rank can no longer commit once the next attempt's rank 0 has moved
the fence, and nothing it finishes afterwards is ever loaded. So the next attempt waits
only for the ranks that can still stop on their own terms: those whose kubelet answers
and whose gang has not seen them die. It does not wait for a pod

- whose node is gone (no kubelet will ever confirm it),
- whose node is unreachable (Ready ``Unknown``: the node lifecycle controller lost its
  kubelet; a ``False`` Ready is a kubelet that still reports, e.g. while it shuts the
  node down gracefully, and its ranks may be saving the checkpoint the next attempt
  loads), or
- that a survivor of its gang named as lost when it left with EXIT_PEER_LOST (its
  termination message's ``lost-pod=`` words), before the node shows anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from spotrun_api.contract import EXIT_PEER_LOST, lost_pod_named
from spotrun_operator.facts.common import pod_node
from spotrun_operator.facts.signals import NodeInfo
from spotrun_operator.judging.classify import node_gone
from spotrun_operator.judging.evidence import containers, is_terminal, name


def lost_pods(pods: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The pods the survivors among ``pods`` named as lost (peer-lost messages)."""
    named = set()
    for pod in pods:
        for cs in containers(pod):
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") == EXIT_PEER_LOST:
                lost = lost_pod_named(str(term.get("message") or ""))
                if lost and lost != name(pod):
                    named.add(lost)
    return frozenset(named)


def unreachable(pod: Mapping[str, Any], nodes: Mapping[str, NodeInfo]) -> bool:
    """The pod's node exists but its kubelet no longer reports (Ready ``Unknown``)."""
    node_name = pod_node(pod)
    node = nodes.get(node_name) if node_name else None
    return node is not None and node.exists and node.ready == "Unknown"


def may_still_stop(
    pod: Mapping[str, Any], nodes: Mapping[str, NodeInfo], lost: frozenset[str]
) -> bool:
    """The pod may still be stopping by itself (saving a checkpoint the next attempt would
    load): the next attempt waits for it."""
    if is_terminal(pod) or node_gone(pod, nodes):
        return False
    return not unreachable(pod, nodes) and name(pod) not in lost


def attempt_stopped(
    pods: Iterable[Mapping[str, Any]],
    deleted_pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
) -> bool:
    """No pod of an ended attempt (``pods`` live, ``deleted_pods`` their last state once
    gone) holds the next one back. The survivors' words may only be in deleted pods: the
    job's deletion takes their ended pods away while the lost pod stays Terminating."""
    live = list(pods)
    lost = lost_pods([*live, *deleted_pods])
    return not any(may_still_stop(p, nodes, lost) for p in live)
