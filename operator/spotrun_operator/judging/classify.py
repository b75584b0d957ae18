"""Pure verdicts on one attempt from the traces its pods, nodes and PyTorchJob leave.

The question is always the same: did the infrastructure take the gang away (a
preemption: never charged to the failure budget), did the application fail, is the
configuration broken, or is it still waiting for capacity / running / done?

Evidence of the infrastructure wins over failed pods: when a node dies, the surviving
ranks usually crash in NCCL with exit 1 before anything else is visible.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from spotrun_operator.facts.common import parse_time, pod_node
from spotrun_operator.facts.signals import (
    ASG_TERMINATION,
    INTERRUPTION_TAINTS,
    JOB_DELETED,
    KARPENTER_DISRUPTION,
    NO_BUDGET_SIGNALS,
    NODE_LOST,
    NODE_SHUTDOWN,
    PEER_LOST,
    POD_DELETED,
    POD_REPLACED,
    REBALANCE,
    SIGNAL_PRIORITY,
    SIGTERM,
    SPOT_INTERRUPTION,
    UNREACHABLE_TAINT,
    NodeInfo,
    lost_until,
    node_info,
    node_signal,
)
from spotrun_operator.judging.evidence import (
    EXIT_SIGTERM,
    NOT_APP_ERRORS,
    Evidence,
    app_error,
    cond,
    containers,
    gather,
    is_master,
    is_terminal,
    name,
    phase,
    pod_disruption_signal,
)
from spotrun_operator.judging.gave_up import describe, failed_containers, gave_up_on_master

# Container waiting reasons no amount of waiting fixes without a human.
CONFIG_WAITING_REASONS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# Failure reasons reported as such (bounded: a metric label); anything else is "Error".
KNOWN_FAILURE_REASONS: Final = frozenset(
    {"OOMKilled", "Error", "ContainerCannotRun", "DeadlineExceeded", "StartError", "JobFailed"}
)


class VerdictKind(Enum):
    SUCCEEDED = "Succeeded"
    PREEMPTED = "Preempted"  # spends the preemption budget
    INTERRUPTED = "Interrupted"  # stopped from outside, no budget (signals.NO_BUDGET_SIGNALS)
    FAILED = "Failed"
    FAILURE_SETTLING = "FailureSettling"  # a failure, maybe caused by a node not yet seen dead
    CONFIG_ERROR = "ConfigurationError"
    UNSCHEDULABLE = "Unschedulable"
    RUNNING = "Running"
    STARTING = "Starting"
    # A pod of the gang could not be placed and the training operator's own wait for it
    # gave up: capacity, no budget (docs/signals.md).
    INCOMPLETE_GANG = "IncompleteGang"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""  # signal (preemption) or failure reason
    message: str = ""
    node: str = ""
    zone: str = ""
    instance_type: str = ""
    nodes: tuple[str, ...] = ()  # every node of the gang that announced an interruption
    # (node, its strongest signal) for each of ``nodes``
    node_signals: tuple[tuple[str, str], ...] = ()
    # FAILURE_SETTLING: when the failure may be charged; RUNNING/STARTING: when a node that
    # stopped reporting counts as lost.
    until: dt.datetime | None = None
    # PREEMPTED/INTERRUPTED: when the signal was given, by its own timestamp (None: none).
    signal_at: dt.datetime | None = None


def _incomplete_gang(pods: Sequence[Mapping[str, Any]], expected: int) -> Verdict | None:
    """Pods failed only in giving up on the master (``init-pytorch`` or EXIT_NO_MASTER)
    while a pod of the gang has no node, or was never created: the gang could not be
    placed, which is capacity, never the application."""
    failed = {name(p): failed_containers(p) for p in pods if phase(p) == "Failed"}
    failed = {k: v for k, v in failed.items() if v}
    if not failed or not all(gave_up_on_master(c) for v in failed.values() for c in v):
        return None
    waiting = [p for p in pods if not is_terminal(p) and not (p.get("spec") or {}).get("nodeName")]
    missing = expected - len(pods)
    if not waiting and missing <= 0:
        return None
    peer = (
        f"pod {name(waiting[0])} had no node ({_unschedulable(waiting[0]) or 'Pending'})"
        if waiting
        else f"{missing} pod(s) of the gang were never created"
    )
    pod = sorted(failed)[0]
    how = describe(failed[pod][0])
    return Verdict(
        VerdictKind.INCOMPLETE_GANG,
        reason="IncompleteGang",
        message=f"pod {pod} {how} gave up waiting for the master while {peer}: the gang "
        "could not be placed",
    )


def job_deleted(verdict: Verdict, job: str) -> Verdict:
    """The verdict on an attempt whose PyTorchJob was seen and is gone: deleted by someone
    other than spotrun (spotrun deletes a job only after recording the attempt's outcome).
    Unless its pods already tell more, the attempt ends, no budget spent: pods deleted
    with no other cause (the garbage collector follows the job's deletion) tell less."""
    explained = verdict.kind is VerdictKind.INTERRUPTED and verdict.reason in (POD_DELETED, SIGTERM)
    waiting = (VerdictKind.RUNNING, VerdictKind.STARTING, VerdictKind.UNSCHEDULABLE)
    if not explained and verdict.kind not in waiting:
        return verdict
    return Verdict(
        VerdictKind.INTERRUPTED,
        reason=JOB_DELETED,
        message=f"PyTorchJob {job} was deleted (not by spotrun)",
    )


def _failure(pod: Mapping[str, Any]) -> tuple[str, str, dt.datetime | None] | None:
    """(reason, message, finishedAt) of a pod one of whose containers exited with an
    application error; None for any other pod: no application error, no failure."""
    if phase(pod) != "Failed" or not app_error(pod):
        return None
    for cs in containers(pod):
        term = (cs.get("state") or {}).get("terminated") or {}
        code = term.get("exitCode")
        if code is None or code in NOT_APP_ERRORS:
            continue
        reason = str(term.get("reason") or "Error")
        reason = reason if reason in KNOWN_FAILURE_REASONS else "Error"
        msg = f"pod {name(pod)} container {cs.get('name')} exited {code} ({term.get('reason')})"
        if term.get("message"):
            msg += f": {str(term['message'])[:300]}"
        return reason, msg, parse_time(term.get("finishedAt"))
    return None


def _config_error(pod: Mapping[str, Any]) -> str | None:
    for cs in containers(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CONFIG_WAITING_REASONS:
            msg = str(waiting.get("message") or "")
            return f"pod {name(pod)} container {cs.get('name')}: {waiting['reason']}: {msg}"
    sched = cond(pod, "PodScheduled")
    text = str((sched or {}).get("message") or "")
    if (
        sched
        and sched.get("status") == "False"
        and "persistentvolumeclaim" in text.lower()
        and ("not found" in text.lower())
    ):
        return f"pod {name(pod)}: {text}"
    return None


def _unschedulable(pod: Mapping[str, Any]) -> str | None:
    sched = cond(pod, "PodScheduled")
    if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        return str(sched.get("message") or "Unschedulable")
    return None


def _job_condition(job: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def _preemption(evidence: Sequence[Evidence]) -> Verdict:
    """The interruption the strongest evidence shows (its node, else one of the same signal);
    PREEMPTED unless the signal spends no budget (INTERRUPTED)."""
    best = min(evidence, key=lambda e: SIGNAL_PRIORITY.index(e.signal))
    node = best.node
    if node is None:  # borrow a node from evidence of the same signal
        node = next((e.node for e in evidence if e.node and e.signal == best.signal), None)
    no_budget = best.signal in NO_BUDGET_SIGNALS
    times = [e.at for e in evidence if e.at is not None and e.signal == best.signal]
    return Verdict(
        VerdictKind.INTERRUPTED if no_budget else VerdictKind.PREEMPTED,
        reason=best.signal,
        message=best.message,
        node=node.name if node else "",
        zone=node.zone if node else "",
        instance_type=node.instance_type if node else "",
        nodes=tuple(sorted({e.node.name for e in evidence if e.node})),
        node_signals=node_signals(evidence),
        signal_at=min(times) if times else None,
    )


def node_signals(evidence: Iterable[Evidence]) -> tuple[tuple[str, str], ...]:
    """(node, the strongest signal seen on it) for every node the evidence names."""
    best: dict[str, str] = {}
    for e in evidence:
        if e.node is None:
            continue
        old = best.get(e.node.name)
        if old is None or SIGNAL_PRIORITY.index(e.signal) < SIGNAL_PRIORITY.index(old):
            best[e.node.name] = e.signal
    return tuple(sorted(best.items()))


def _failed(
    pods: Sequence[Mapping[str, Any]],
    job: Mapping[str, Any] | None,
    now: dt.datetime,
    settle_seconds: float,
) -> Verdict | None:
    """The earliest application failure (settling while a dead node may yet explain it).

    Only a container that exited with an application error is one. A PyTorchJob the
    training operator marked Failed with no such container left to show (its pods went
    with their node while the operator was not watching) is a loss of the gang, charged
    to the preemption budget, never to the failure budget."""
    failures = [f for f in (_failure(p) for p in pods) if f]
    if failures:
        epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
        reason, msg, finished = min(failures, key=lambda f: f[2] or epoch)
        until = (finished or now) + dt.timedelta(seconds=settle_seconds)
        if finished is not None and until > now:
            return Verdict(VerdictKind.FAILURE_SETTLING, reason=reason, message=msg, until=until)
        return Verdict(VerdictKind.FAILED, reason=reason, message=msg)
    failed_job = _job_condition(job, "Failed")
    if failed_job:
        return Verdict(
            VerdictKind.PREEMPTED,
            reason=POD_REPLACED,
            message=f"the PyTorchJob failed ({failed_job.get('message')}) but no container "
            "of the attempt exited with an application error: its pods are gone",
        )
    return None


def _progress(
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    expected: int,
    now: dt.datetime,
    node_lost_grace_seconds: float,
) -> Verdict:
    """Nothing went wrong: the gang is running, or still starting."""
    # An unreachable node still within its grace: look again when the grace ends.
    pending = [
        lost_until(n, node_lost_grace_seconds, now)
        for n in nodes.values()
        if n.exists and (n.ready == "Unknown" or UNREACHABLE_TAINT in n.taints)
    ]
    wake = min((u for u in pending if u is not None), default=None)
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if len(live) >= expected and all(phase(p) == "Running" for p in live):
        return Verdict(VerdictKind.RUNNING, until=wake)
    return Verdict(VerdictKind.STARTING, message=f"{len(live)}/{expected} pods created", until=wake)


def classify(
    *,
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    expected: int,
    now: dt.datetime,
    job: Mapping[str, Any] | None = None,
    deleted_pods: Sequence[Mapping[str, Any]] = (),
    known_pod_uids: Iterable[str] = (),
    restart_on_rebalance: bool = False,
    failure_settle_seconds: float = 0.0,
    node_lost_grace_seconds: float = 0.0,
) -> Verdict:
    """The verdict on one attempt whose outcome is not recorded yet.

    ``pods`` are the attempt's live pods, ``deleted_pods`` the last state of its pods that
    were deleted (remembered from the watch), ``nodes`` what is known of their nodes,
    ``known_pod_uids`` the pods recorded when the gang first ran. In order: success, then
    evidence of the infrastructure, configuration errors, application failures, missing
    capacity, progress.
    """
    masters = [p for p in [*pods, *deleted_pods] if is_master(p)]
    if any(phase(p) == "Succeeded" for p in masters) or _job_condition(job, "Succeeded"):
        return Verdict(VerdictKind.SUCCEEDED, message="the master finished (exit 0)")
    evidence = gather(
        pods,
        deleted_pods,
        nodes,
        known_pod_uids,
        restart_on_rebalance,
        now,
        node_lost_grace_seconds,
    )
    if any(_failure(p) for p in [*pods, *deleted_pods]):
        # A survivor's peer-lost is the gang's word, not the infrastructure's: a rank that
        # failed with an application error explains it, and the attempt is that failure.
        evidence = [e for e in evidence if e.signal != PEER_LOST]
    if evidence:
        return _preemption(evidence)
    for pod in pods:
        msg = _config_error(pod)
        if msg:
            return Verdict(VerdictKind.CONFIG_ERROR, reason="ConfigurationError", message=msg)
    incomplete = _incomplete_gang(pods, expected)
    if incomplete is not None:
        return incomplete
    failed = _failed([*pods, *deleted_pods], job, now, failure_settle_seconds)
    if failed is not None:
        return failed
    for pod in pods:
        msg = _unschedulable(pod)
        if msg:
            return Verdict(VerdictKind.UNSCHEDULABLE, reason="Unschedulable", message=msg)
    return _progress(pods, nodes, expected, now, node_lost_grace_seconds)


__all__ = [
    "ASG_TERMINATION",
    "EXIT_SIGTERM",
    "INTERRUPTION_TAINTS",
    "KARPENTER_DISRUPTION",
    "NODE_LOST",
    "NODE_SHUTDOWN",
    "POD_REPLACED",
    "REBALANCE",
    "SIGNAL_PRIORITY",
    "SIGTERM",
    "SPOT_INTERRUPTION",
    "NodeInfo",
    "Verdict",
    "VerdictKind",
    "classify",
    "is_master",
    "is_terminal",
    "job_deleted",
    "node_info",
    "node_signal",
    "node_signals",
    "pod_disruption_signal",
]


def node_gone(pod: Mapping[str, Any], nodes: Mapping[str, NodeInfo]) -> bool:
    """The pod's node no longer exists: no kubelet will ever stop it or confirm it.

    An unreachable node that still exists may yet run the pod (a partition): its pods
    are only force-deleted once their grace period is long over, so that two gangs
    never write the same checkpoint folder."""
    name = pod_node(pod)
    node = nodes.get(name) if name else None
    return node is not None and not node.exists
