"""What a decision does to the run's children: create an attempt's PyTorchJob (and the
objects it needs), stop a gang gracefully, tell when it is gone (pure: actions only)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from spotrun_api.contract import DEFAULT_TERMINATION_GRACE_SECONDS
from spotrun_api.enums import Outcome
from spotrun_api.naming import job_name
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.facts.common import name_of, parse_time, pod_meta
from spotrun_operator.facts.signals import NodeInfo, going
from spotrun_operator.judging import fence
from spotrun_operator.judging.classify import is_terminal, node_gone
from spotrun_operator.model import builders, reducers
from spotrun_operator.model.plan import CreateJob, DeleteJob, DeletePods, EnsureObjects, ValidateJob


def pods_to_stop(
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    now: dt.datetime,
    overdue_seconds: float,
) -> tuple[list[str], list[str]]:
    """(graceful, force): pods to SIGTERM, and pods to force-delete (their node is gone,
    or their graceful deletion is overdue by more than ``overdue_seconds``)."""
    graceful, force = [], []
    for p in pods:
        if is_terminal(p):
            continue  # already ended; the job's deletion lets the GC remove it
        deleting = pod_meta(p).get("deletionTimestamp")
        if node_gone(p, nodes):
            force.append(name_of(p))
        elif not deleting:
            graceful.append(name_of(p))
        else:
            deadline = parse_time(deleting)
            if deadline and (now - deadline).total_seconds() > overdue_seconds:
                force.append(name_of(p))
    return sorted(graceful), sorted(force)


def stop_pods(d: Draft, n: int, graceful_too: bool = True) -> None:
    """SIGTERM every rank of attempt ``n`` at once (graceful delete). Pods on a node
    that is gone are force-deleted: no kubelet will ever confirm their end.
    ``graceful_too=False``: the garbage collector stops the others (their job is being
    deleted, and takes them with it: no write per pod)."""
    grace = d.spec.termination_grace_period_seconds if d.spec else DEFAULT_TERMINATION_GRACE_SECONDS
    graceful, force = pods_to_stop(
        d.pods_of(n), d.obs.nodes, d.now, d.cfg.stop_timeout_slack_seconds
    )
    if graceful and graceful_too:
        d.actions.append(DeletePods(tuple(graceful), int(grace)))
    if force:
        d.actions.append(DeletePods(tuple(force), 0))


# The garbage collector deletes a deleted job's pods within a second or two, longer in a
# storm of deletions (many gangs lost at once). Only when it is later than this does the
# operator SIGTERM them itself: a write per pod that the collector makes anyway.
COLLECTOR_GRACE_SECONDS = 10.0


def _collector_late(d: Draft, n: int) -> bool:
    """The collector had its time to stop attempt ``n``'s pods (counted from the outcome;
    an attempt with none, such as one left over by a crash, has had it); else look again
    when it is over."""
    entry = d.entry(n)
    ended = parse_time(entry.ended_at) if entry is not None else None
    waited = (d.now - ended).total_seconds() if ended is not None else COLLECTOR_GRACE_SECONDS
    if waited >= COLLECTOR_GRACE_SECONDS:
        return True
    d.requeue(COLLECTOR_GRACE_SECONDS - waited)
    return False


def job_finished(job: Mapping[str, Any] | None) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(
        c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in conditions
    )


def stop_gang(d: Draft, n: int, terminal: bool = False) -> None:
    """End attempt ``n``. Deleting the PyTorchJob stops its pods: the garbage collector
    deletes them at once (background propagation), each with its own grace period, as a
    graceful delete of ours would, and the training operator cannot recreate them. Only
    pods the collector cannot end in time are deleted here (their node is gone, or
    their grace is long overdue). A finished job of a finished run is kept (its pods
    hold the logs); only its still-running pods are stopped."""
    job = d.obs.jobs.get(n)
    entry = d.entry(n)
    finished = (entry is not None and entry.outcome is Outcome.SUCCEEDED) or job_finished(job)
    deleting = job is not None and not (terminal and finished)
    # A job already being deleted (a finalizer holds it) needs no second DELETE: its
    # deletionTimestamp is the answer to the first one.
    if deleting and not (job or {}).get("metadata", {}).get("deletionTimestamp"):
        d.actions.append(DeleteJob(job_name(d.obs.ref.name, n)))
    # A job already gone leaves its pods to the collector, for a while (the cache may see
    # the job's deletion before the pods'); a job kept leaves them to no one.
    stop_pods(d, n, graceful_too=not deleting and (job is not None or _collector_late(d, n)))


def gang_gone(d: Draft, n: int) -> bool:
    """No pod of attempt ``n`` may still be stopping by itself (writing the checkpoint the
    next attempt loads); the fence makes the rest harmless (:mod:`judging.fence`)."""
    return fence.attempt_stopped(d.pods_of(n), d.deleted_pods_of(n), d.obs.nodes)


def avoided_nodes(d: Draft) -> list[str]:
    """Nodes the next attempt must not land on (a required affinity): those going away now
    (:func:`signals.going`, as the watch knows every node and as this run's nodes read).
    Only these: a healthy node excluded by a required term could leave the gang
    unschedulable while capacity exists."""
    here = {name for name, node in d.obs.nodes.items() if going(node)}
    return sorted(set(d.obs.interrupted_nodes) | here)


def disfavored_nodes(d: Draft) -> list[str]:
    """Nodes the next attempt prefers not to land on: those behind the run's recent
    preemptions (a node the preemption named) that are not going away (those are avoided
    outright)."""
    recent = reducers.recent_interrupted_nodes(d.history, d.now, d.cfg.avoid_nodes_seconds)
    return sorted(set(recent) - set(avoided_nodes(d)))


def create_job(d: Draft, n: int, validate_only: bool = False) -> None:
    """Ensure the run's objects, then create attempt ``n``'s PyTorchJob (``validate_only``:
    only have the apiserver judge it, see :class:`plan.ValidateJob`)."""
    spec = d.spec
    assert spec is not None
    ref = d.obs.ref
    entry = d.entry(n)
    objs = [
        builders.build_pvc(ref, spec),
        builders.build_service_account(ref),
        builders.build_role(ref),
        builders.build_role_binding(ref),
        builders.build_gang_pdb(ref, spec) if d.cfg.train_through_notice else None,
    ]
    # Also before a dry run: the apiserver's pod admission looks the ServiceAccount up.
    d.actions.append(EnsureObjects(tuple(o for o in objs if o is not None)))
    body = builders.build_pytorchjob(
        ref,
        spec,
        attempt=n,
        capacity_type=(entry.capacity_type if entry else None) or spec.capacity.type.value,
        interval_seconds=reducers.interval_of(entry),
        avoid_nodes=avoided_nodes(d),
        prefer_not_nodes=disfavored_nodes(d),
        nodes=entry.nodes if entry else None,
    )
    source = f"{ref.uid}/{ref.generation}"
    d.actions.append(ValidateJob(body, source) if validate_only else CreateJob(body, source))
