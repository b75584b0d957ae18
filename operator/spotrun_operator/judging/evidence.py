"""What an attempt's pods and their nodes show of an interruption (pure).

Every piece of evidence is a signal (:mod:`spotrun_operator.facts.signals`) with the node it was
seen on. Only what the cluster keeps is read: pod conditions and reasons, container exit
codes, node objects with their taints, labels and conditions, and the pods remembered from
the watch; so a restarted operator judges an attempt the way a watching one would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from spotrun_api.contract import EXIT_FENCED, EXIT_PEER_LOST
from spotrun_operator.facts.common import LABEL_REPLICA_TYPE, parse_time
from spotrun_operator.facts.signals import (
    DEADLINE_EXCEEDED,
    DISRUPTION,
    EVICTION,
    KUBELET_PREEMPTION,
    NODE_LOST,
    NODE_PRESSURE,
    NODE_SHUTDOWN,
    PEER_LOST,
    POD_DELETED,
    POD_REPLACED,
    POD_STOPPED,
    SCHEDULER_PREEMPTION,
    SIGTERM,
    TAINT_EVICTION,
    NodeInfo,
    drain_cause,
    node_signal,
    node_text,
    shutdown_signal,
    signal_time,
)

EXIT_SIGTERM: Final = 143
# Exit codes that are not an application error: done, stopped after a saved checkpoint, left
# because a peer of the gang was lost, refused to commit because a newer attempt fenced the
# checkpoint folder (spotrun_api contract; docs/trainer.md, "Fenced checkpoints").
NOT_APP_ERRORS: Final = (0, EXIT_SIGTERM, EXIT_PEER_LOST, EXIT_FENCED)

# DisruptionTarget reasons (kubernetes/kubernetes pkg/apis/core/types.go
# PodReasonPreemptionByScheduler, PodReasonDeletionByTaintManager, ...).
_DISRUPTION_REASONS: Final[Mapping[str, str]] = {
    "EvictionByEvictionAPI": EVICTION,
    "PreemptionByScheduler": SCHEDULER_PREEMPTION,
    "PreemptionByKubeScheduler": SCHEDULER_PREEMPTION,
    "DeletionByTaintManager": TAINT_EVICTION,
    "DeletionByPodGC": NODE_LOST,
    "TerminationByKubelet": NODE_SHUTDOWN,
}
# Reasons the kubelet puts on a Failed pod (status.reason), even without a DisruptionTarget
# condition (older clusters): kubernetes/kubernetes pkg/kubelet/eviction/eviction_manager.go
# ("Evicted"), pkg/kubelet/preemption/preemption.go ("Preempting"),
# pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go ("Terminated" on shutdown,
# "NodeShutdown" when admission is refused), pkg/kubelet/active_deadline.go
# ("DeadlineExceeded").
_POD_REASONS: Final[Mapping[str, str]] = {
    "Evicted": NODE_PRESSURE,
    "Preempting": KUBELET_PREEMPTION,
    "NodeShutdown": NODE_SHUTDOWN,
    "DeadlineExceeded": DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class Evidence:
    signal: str
    node: NodeInfo | None
    message: str
    # When the signal was given, by its own timestamp (None: it carries none).
    at: dt.datetime | None = None


# --- pod helpers -----------------------------------------------------------------------


def cond(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])


def name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_master(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return str(labels.get(LABEL_REPLICA_TYPE, "")).lower() == "master"


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return phase(pod) in ("Succeeded", "Failed")


def exit_codes(pod: Mapping[str, Any]) -> list[int]:
    """Exit codes of the pod's terminated containers."""
    codes = []
    for cs in containers(pod):
        code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
        if isinstance(code, int):
            codes.append(code)
    return codes


def app_error(pod: Mapping[str, Any]) -> bool:
    """A container exited with an application error: any code but 0, 143 (the trainer's
    "stopped after a saved checkpoint") and 86 (a peer was lost), spotrun_api contract."""
    return any(code not in NOT_APP_ERRORS for code in exit_codes(pod))


def _peer_lost(pod: Mapping[str, Any]) -> Evidence | None:
    """A rank of this pod left because a peer stopped heartbeating. No node: the pod's own
    node is the healthy one; which peer went is in the rank's termination message."""
    for cs in containers(pod):
        term = (cs.get("state") or {}).get("terminated") or {}
        if term.get("exitCode") == EXIT_PEER_LOST:
            said = str(term.get("message") or "").strip()[:300] or "a peer stopped heartbeating"
            msg = f"pod {name(pod)} exited {EXIT_PEER_LOST}: {said}"
            return Evidence(PEER_LOST, None, msg, parse_time(term.get("finishedAt")))
    return None


def pod_disruption_signal(pod: Mapping[str, Any]) -> str | None:
    """The signal a DisruptionTarget condition names, if the pod has one."""
    c = cond(pod, "DisruptionTarget")
    if not c or c.get("status") != "True":
        return None
    reason = str(c.get("reason") or "")
    pod_reason = (pod.get("status") or {}).get("reason")
    if reason == "TerminationByKubelet" and pod_reason == "Evicted":
        return NODE_PRESSURE  # kubelet node-pressure eviction, not a shutdown
    if reason == "TerminationByKubelet" and pod_reason == "Preempting":
        return KUBELET_PREEMPTION  # room for a critical pod, not a shutdown
    return _DISRUPTION_REASONS.get(reason, DISRUPTION)


def pod_reason_signal(pod: Mapping[str, Any]) -> str | None:
    """The signal a Failed pod's own status.reason names (no DisruptionTarget needed)."""
    st = pod.get("status") or {}
    reason = str(st.get("reason") or "")
    if reason == "Terminated" and "shutdown" in str(st.get("message") or ""):
        return NODE_SHUTDOWN
    return _POD_REASONS.get(reason)


# --- evidence --------------------------------------------------------------------------


def _pod_evidence(
    pod: Mapping[str, Any], node: NodeInfo | None, deleted: bool, rr: bool
) -> Evidence | None:
    """What the pod itself shows (``rr``: a rebalance recommendation restarts)."""
    sig = pod_disruption_signal(pod)
    if sig == NODE_SHUTDOWN:  # the kubelet's word, also when the node's Ready is not seen
        sig = shutdown_signal(node)
    if sig:
        if sig == EVICTION and node is not None:
            sig = drain_cause(node, rr) or EVICTION  # what the drain was for
        c = cond(pod, "DisruptionTarget") or {}
        msg = f"pod {name(pod)}: DisruptionTarget {c.get('reason')}"
        msg += f": {c.get('message')}" if c.get("message") else ""
        return Evidence(sig, node, msg, parse_time(c.get("lastTransitionTime")))
    failed = phase(pod) == "Failed"
    sig = pod_reason_signal(pod) if failed else None
    if sig == NODE_SHUTDOWN:
        sig = shutdown_signal(node)
    if sig:  # the kubelet stopped it: its exit code (137 after SIGKILL) is not the app's
        st = pod.get("status") or {}
        return Evidence(sig, node, f"pod {name(pod)}: {st.get('reason')}: {st.get('message')}")
    if is_terminal(pod) and (phase(pod) == "Succeeded" or app_error(pod)):
        return None  # it ended on its own (crash, OOM, success) before anyone deleted it
    peer_lost = _peer_lost(pod) if failed else None
    if peer_lost is not None:  # also on its own, before any delete
        return peer_lost
    if deleted or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return Evidence(POD_DELETED, node, f"pod {name(pod)} was deleted")
    if failed and EXIT_SIGTERM in exit_codes(pod):
        return Evidence(SIGTERM, node, f"pod {name(pod)} exited 143 (SIGTERM)")
    if failed:
        why = (pod.get("status") or {}).get("reason") or "no container exited"
        return Evidence(POD_STOPPED, node, f"pod {name(pod)} failed with no exit code ({why})")
    return None


def gather(
    pods: Sequence[Mapping[str, Any]],
    deleted_pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    known_pod_uids: Iterable[str],
    restart_on_rebalance: bool,
    now: dt.datetime,
    lost_grace_seconds: float,
) -> list[Evidence]:
    """Every piece of evidence of an interruption the attempt's pods and nodes show."""
    found: list[Evidence] = []
    for pod, deleted in [(p, False) for p in pods] + [(p, True) for p in deleted_pods]:
        node_name = (pod.get("spec") or {}).get("nodeName")
        node = (
            (nodes.get(node_name) or NodeInfo(name=node_name, exists=False)) if node_name else None
        )
        if node is not None:
            sig = node_signal(node, restart_on_rebalance, now, lost_grace_seconds)
            if sig:
                text = f"node {node.name}: {node_text(node, sig)}"
                found.append(Evidence(sig, node, text, signal_time(node, sig)))
        ev = _pod_evidence(pod, node, deleted, restart_on_rebalance)
        if ev is not None:
            found.append(ev)
    live_uids = {str((p.get("metadata") or {}).get("uid")) for p in pods}
    gone_uids = {str((p.get("metadata") or {}).get("uid")) for p in deleted_pods}
    replaced = [u for u in known_pod_uids if u not in live_uids and u not in gone_uids]
    if replaced:
        found.append(Evidence(POD_REPLACED, None, f"{len(replaced)} pod(s) of the gang vanished"))
    return found
