"""Observation: everything :func:`reconcile.decide` needs about one TrainingRun, through
the reads of :class:`KubeReads` (the runner answers them from its watch caches,
:mod:`cache`), plus what only the watch saw (the last state of pods and nodes now gone).

This module never writes; it depends on the reads it needs (:class:`KubeReads`), not on
the client class, so the I/O module can change without touching it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from spotrun_api.spec import InvalidSpec, TrainingRunSpec, parse_spec
from spotrun_api.status import TrainingRunStatus, parse_status
from spotrun_operator.facts.common import attempt_of, is_spare, parse_time, utcnow
from spotrun_operator.facts.signals import NodeInfo, node_info
from spotrun_operator.judging import fence
from spotrun_operator.judging.verdicts import BUILD_ERRORS
from spotrun_operator.model import builders
from spotrun_operator.model.plan import Observed, Rejected, RunRef
from spotrun_operator.money.cost import Price, Prices

Obj = dict[str, Any]


# Prices for some instance types, and the PricingAvailable condition (None: not priced by AWS).
PriceSource = Callable[
    [Sequence[str]], tuple[Mapping[str, Price] | Prices, Mapping[str, str] | None]
]


class KubeReads(Protocol):
    """The reads observation makes (implemented by ``kube.Kube``)."""

    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Obj]: ...

    def list_pods(self, namespace: str, run: str) -> list[Obj]: ...

    def get_node(self, name: str) -> Obj | None: ...

    def get_workload(self, namespace: str, job_uid: str) -> Obj | None: ...

    def pod_refusal(self, namespace: str, job: Mapping[str, Any]) -> Rejected | None: ...

    def missing(self, namespace: str, refs: Sequence[tuple[str, str]]) -> list[str]: ...


def run_ref(run: Mapping[str, Any]) -> RunRef:
    meta = run["metadata"]
    return RunRef(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 1),
    )


def of_this_run(
    run: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The pods created no earlier than ``run``. Pods carry the run's name, not its UID: a
    run deleted and created again under the same name would otherwise take the old run's
    pods for its own, those still terminating and those the watch remembers (their
    DELETED events come after the old run was forgotten), and read their nodes' signals as
    its own attempts' (a new attempt 1 preempted by the old one's spot notice)."""
    born = parse_time(str((run.get("metadata") or {}).get("creationTimestamp") or "") or None)
    if born is None:
        return list(pods)
    out = []
    for p in pods:
        made = parse_time(str((p.get("metadata") or {}).get("creationTimestamp") or "") or None)
        if made is None or made >= born:
            out.append(p)
    return out


def observe(
    kube: KubeReads,
    run: Mapping[str, Any],
    *,
    remembered_nodes: Mapping[str, NodeInfo],
    seen_pods: Sequence[Mapping[str, Any]],
    interrupted_nodes: Sequence[str],
    price_source: PriceSource | None = None,
    **extra: Any,
) -> Observed:
    """Everything :func:`reconcile.decide` needs about ``run``, through ``kube``'s reads
    (plus what only the watch saw: the last state of pods and nodes now gone)."""
    ref = run_ref(run)
    jobs = kube.list_jobs(ref.namespace, ref.name, ref.uid)
    listed = of_this_run(run, kube.list_pods(ref.namespace, ref.name))
    # A pod the watch saw that the list no longer has is gone: keep its last state.
    live = {str((p.get("metadata") or {}).get("uid")) for p in listed}
    vanished = [
        p
        for p in of_this_run(run, seen_pods)
        if str((p.get("metadata") or {}).get("uid")) not in live
    ]
    # The warm spares' pods share the run's label but are no attempt's: apart from here on.
    pods = [p for p in listed if not is_spare(p)]
    deleted_pods = [p for p in vanished if not is_spare(p)]
    extra["spare_pods"] = [p for p in listed if is_spare(p)]
    extra["deleted_spare_pods"] = [p for p in vanished if is_spare(p)]
    names = {
        str((p.get("spec") or {}).get("nodeName"))
        for p in [*listed, *vanished]
        if (p.get("spec") or {}).get("nodeName")
    }
    nodes: dict[str, NodeInfo] = {}
    for name in sorted(names):
        obj = kube.get_node(name)
        if obj is not None:
            nodes[name] = node_info(obj)
        else:
            last = remembered_nodes.get(name)
            gone = NodeInfo(name=name, exists=False, ready="Unknown")
            nodes[name] = dataclasses.replace(last, exists=False) if last else gone
    spec, spec_error = parse_run_spec(run.get("spec"))
    status = parse_status(run.get("status"))
    rejected = extra.pop("rejected", None) or _pod_refusal(kube, ref, status, jobs, pods)
    now = utcnow()
    if price_source is not None:  # the prices of the types the typed spec allows
        types = list(spec.capacity.instance_types) if spec is not None else []
        extra["prices"], extra["pricing_condition"] = price_source(types)
    return Observed(
        workloads=_workloads(kube, ref, spec, jobs),
        rejected=rejected,
        ref=ref,
        spec=spec,
        spec_error=spec_error,
        status=status,
        now=now,
        jobs=jobs,
        pods=pods,
        deleted_pods=list(deleted_pods),
        nodes=nodes,
        fleet=_fleet(remembered_nodes, nodes),
        missing_refs=_missing(kube, ref, spec)
        if _may_create(status, jobs, pods, deleted_pods, nodes, now)
        else [],
        interrupted_nodes=list(interrupted_nodes),
        deleting=bool((run.get("metadata") or {}).get("deletionTimestamp")),
        **extra,
    )


def _fleet(
    remembered: Mapping[str, NodeInfo], fresh: Mapping[str, NodeInfo]
) -> dict[str, NodeInfo]:
    """The existing nodes the watch knows (fresh reads win)."""
    known = {**remembered, **fresh}
    return {name: n for name, n in known.items() if n.exists}


def _may_create(
    status: TrainingRunStatus,
    jobs: Mapping[int, Obj],
    pods: Sequence[Mapping[str, Any]],
    deleted_pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    now: dt.datetime,
) -> bool:
    """This decision may create an attempt's PyTorchJob. Only then are the objects the pods
    need read (from the API: no watch covers Secrets), so a running or finished run makes
    no such read, and a recovery makes one: not while its gang stops or its backoff runs.
    The rules are those of reconcile: a live attempt without its job is (re)created; after
    an outcome the next one waits for the ranks that may still stop (children.gang_gone) and for
    ``nextAttemptAt`` (outcomes.after_outcome)."""
    if status.phase is not None and status.phase.terminal:
        return False
    live = status.attempt or 0
    entry = next((e for e in status.attempts or () if e.attempt == live), None)
    if entry is None or entry.outcome is None:
        return live not in jobs
    stopping = not fence.attempt_stopped(
        [p for p in pods if attempt_of(p) == live],
        [p for p in deleted_pods if attempt_of(p) == live],
        nodes,
    )
    due = parse_time(entry.next_attempt_at)
    return not stopping and (due is None or due <= now)


def _pod_refusal(
    kube: KubeReads,
    ref: RunRef,
    status: TrainingRunStatus,
    jobs: Mapping[int, Obj],
    pods: Sequence[Mapping[str, Any]],
) -> Rejected | None:
    """The apiserver refused a pod of the live attempt (reported by the training operator
    in events, which no watch of ours covers): looked for only while that attempt's gang
    has not run, is not held by a queue (suspended) and has fewer pods than it asks for,
    the only time a refusal can be what holds it."""
    if not jobs:
        return None
    live = max(jobs)
    entry = next((e for e in status.attempts or () if e.attempt == live), None)
    if entry is not None and (entry.started_at or entry.outcome):
        return None
    job = jobs[live]
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return None
    made = sum(1 for p in pods if attempt_of(p) == live)
    wanted = builders.job_nodes(job)
    if wanted is not None and made >= wanted:
        return None
    return kube.pod_refusal(ref.namespace, job)


def _workloads(
    kube: KubeReads, ref: RunRef, spec: TrainingRunSpec | None, jobs: Mapping[int, Obj]
) -> dict[int, Obj]:
    """Kueue's Workload of the live attempt's PyTorchJob, for a run with spec.queueName."""
    if spec is None or not spec.queue_name or not jobs:
        return {}
    live = max(jobs)
    uid = str((jobs[live].get("metadata") or {}).get("uid") or "")
    workload = kube.get_workload(ref.namespace, uid) if uid else None
    return {live: workload} if workload is not None else {}


def parse_run_spec(raw: Any) -> tuple[TrainingRunSpec | None, str]:
    """The typed spec, or None and why the model rejects it (decide's InvalidSpec)."""
    try:
        return parse_spec(raw if raw is not None else {}), ""
    except InvalidSpec as exc:
        return None, str(exc)


def _missing(kube: KubeReads, ref: RunRef, spec: TrainingRunSpec | None) -> list[str]:
    """Objects the pods need that do not exist (none checked for an unusable spec: decide
    reports that instead)."""
    if spec is None:
        return []
    try:
        refs = builders.referenced_objects(spec, ref)
    except BUILD_ERRORS:
        return []
    return kube.missing(ref.namespace, refs)
