"""The pure state machine of a TrainingRun: :func:`decide` maps what was observed to a
status write plus idempotent actions.

Per attempt N (PyTorchJob ``<run>-aN``) the history entry moves through
created -> startedAt (gang Running) -> outcome + endedAt (recorded *before* acting) ->
stoppedAt (every pod gone, lost work final) -> attempt N+1 created after the backoff.
The live attempt is the highest of the existing PyTorchJobs and ``status.attempt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from spotrun_api import naming
from spotrun_api.enums import ConditionType, Outcome, RunReason
from spotrun_api.naming import job_name
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt
from spotrun_operator.decisions import (
    elasticity,
    grow_back,
    notice_ride,
    outcomes,
    queueing,
    rebalance,
)
from spotrun_operator.decisions.children import stop_gang, stop_pods
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.finish import finish
from spotrun_operator.decisions.transitions import adopt, announces, fail_run, record, succeed_run
from spotrun_operator.facts.common import attempt_of, fmt_time, parse_time, pod_node, pod_uid
from spotrun_operator.facts.config import OperatorConfig
from spotrun_operator.judging.classify import REBALANCE, Verdict, VerdictKind, classify, job_deleted
from spotrun_operator.judging.verdicts import invalid_spec
from spotrun_operator.model.plan import Decision, DeleteJob, Observed

__all__ = ["PLACEMENT_WRITE_SECONDS", "attempt_of", "decide", "live_attempt"]

# A gang's placement (its pods placed, their UIDs) is no state a user waits on: it is
# written with the Running phase when the gang runs within this many seconds of its newest
# pod's creation, which spares a recovery one of its status writes, and on its
# own after that (an image pull takes minutes; the UIDs must be recorded before the pods
# can vanish while the operator is down).
PLACEMENT_WRITE_SECONDS = 10.0


def live_attempt(obs: Observed) -> int:
    return naming.live_attempt(obs.status.attempt, obs.jobs.keys())


def decide(obs: Observed, cfg: OperatorConfig) -> Decision:
    """Everything the operator should do about one TrainingRun right now."""
    if obs.deleting:
        return Decision(requeue_after=cfg.resync_seconds)
    d = Draft(obs, cfg)
    problem = invalid_spec(obs)
    terminal = d.phase is not None and d.phase.terminal
    if problem is not None and not terminal:
        fail_run(d, RunReason.INVALID_SPEC, problem)
    if obs.spec is not None:
        _decide(d, obs.spec)
    else:
        _wind_down(d)
    return finish(d)


def _wind_down(d: Draft) -> None:
    """A run whose spec cannot be read starts nothing; whatever still runs is stopped."""
    live = live_attempt(d.obs)
    _cleanup_older(d, live)
    if live:
        stop_gang(d, live, terminal=True)
    d.requeue(max(d.cfg.resync_seconds, 300.0))


def _decide(d: Draft, spec: TrainingRunSpec) -> None:
    obs = d.obs
    live = live_attempt(obs)
    if live and d.entry(live) is None:
        adopt(d, live)
    _cleanup_older(d, live)
    if d.phase is not None and d.phase.terminal:
        if live:
            stop_gang(d, live, terminal=True)
        d.requeue(max(d.cfg.resync_seconds, 300.0))
        return
    if live == 0:
        if not spec.suspend:
            outcomes.start_attempt(d, spec, 1)
        return
    entry = d.entry(live)
    assert entry is not None
    if entry.outcome is not None:
        outcomes.after_outcome(d, spec, live, entry)
    else:
        _judge(d, spec, live, entry)


def _cleanup_older(d: Draft, live: int) -> None:
    """Jobs and pods of attempts before the live one must not run (a crash may have left
    them): delete them, gracefully."""
    for n in sorted(d.obs.jobs):
        if n < live:
            d.actions.append(DeleteJob(job_name(d.obs.ref.name, n)))
    for n in sorted({attempt_of(p) for p in d.obs.pods}):
        if n < live:
            stop_pods(d, n)


def _judge(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> None:
    """The live attempt has no outcome yet: classify what its pods show, and act."""
    obs = d.obs
    if spec.suspend:
        record(d, n, Outcome.SUSPENDED, "Suspended", "spec.suspend is true")
        d.event("Normal", "Suspending", f"attempt {n}: suspending, stopping the gang gracefully")
        stop_gang(d, n)
        return
    job = obs.jobs.get(n)
    existed = "yes" if job is not None else _job_existed(d, n, entry)
    if existed == "maybe":  # pods ahead of a job the cache has not seen yet
        d.requeue(1.0)
        return
    if existed == "no":
        outcomes.create_when_placeable(d, spec, n, entry)
        return
    if job is not None and queueing.held(d, spec, n, entry, job):
        return
    pods = d.pods_of(n)
    notice_ride.track(d, n, entry)
    verdict = _verdict(d, spec, n, d.entry(n) or entry, job)
    _notice_rebalance(d, n, entry)
    kind = verdict.kind
    if kind is VerdictKind.SUCCEEDED:
        record(d, n, Outcome.SUCCEEDED, "Completed", verdict.message)
        succeed_run(d, f"attempt {n} finished: {verdict.message}")
        stop_gang(d, n, terminal=True)
    elif kind is VerdictKind.PREEMPTED:
        warm = notice_ride.warm_move(d, spec, n, entry)
        outcomes.preempted(d, spec, n, entry, verdict, warm=warm)
    elif kind is VerdictKind.INTERRUPTED:
        outcomes.interrupted(d, n, entry, verdict)
    elif kind is VerdictKind.FAILED:
        outcomes.failed(d, spec, n, verdict)
    elif kind is VerdictKind.FAILURE_SETTLING:
        assert verdict.until is not None
        d.requeue((verdict.until - obs.now).total_seconds())
    elif kind is VerdictKind.CONFIG_ERROR:
        outcomes.config_error(d, n, entry, verdict.message)
    elif kind is VerdictKind.UNSCHEDULABLE:
        outcomes.unschedulable(d, spec, n, entry, verdict)
    elif kind is VerdictKind.INCOMPLETE_GANG:
        outcomes.incomplete_gang(d, n, verdict)
    else:
        _progressing(d, n, entry, pods, running=kind is VerdictKind.RUNNING)
        if kind is VerdictKind.RUNNING:
            grow_back.grow_if_held(d, spec, n, d.entry(n) or entry)
        if verdict.until is not None:
            d.requeue((verdict.until - obs.now).total_seconds())
    after = d.entry(n)
    if not d.terminal_now and not (after and after.outcome):
        outcomes.check_budget(d, spec, n)


def _verdict(
    d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt, job: Mapping[str, Any] | None
) -> Verdict:
    """The verdict on live attempt ``n`` (``job`` None: its job existed and is gone)."""
    obs = d.obs
    verdict = classify(
        pods=d.pods_of(n),
        nodes=notice_ride.held_nodes(d, spec, n, entry),
        expected=entry.nodes or spec.nodes,
        now=obs.now,
        job=job,
        deleted_pods=[p for p in obs.deleted_pods if attempt_of(p) == n],
        known_pod_uids=entry.pod_uids or (),
        restart_on_rebalance=rebalance.move_now(d, spec, n, entry),
        failure_settle_seconds=d.cfg.failure_settle_seconds,
        node_lost_grace_seconds=d.cfg.node_lost_grace_seconds,
    )
    return verdict if job is not None else job_deleted(verdict, job_name(obs.ref.name, n))


def _job_existed(d: Draft, n: int, entry: Attempt) -> Literal["yes", "no", "maybe"]:
    """Whether attempt ``n``'s PyTorchJob, absent from the cache, existed: its gang ran or
    was recorded, or its pods are being deleted or are gone (the garbage collector follows
    the job's deletion). Such a job was deleted, never "not yet created": creating it again
    would start a gang only to stop it, racing the old pods under the same names. Live pods
    not being deleted prove a job too, but may be ahead of a job the cache has not seen
    yet: "maybe" while the newest is younger than PLACEMENT_WRITE_SECONDS (a watch lags
    seconds, not more), "yes" after that (the job was deleted and its pods orphaned)."""
    if entry.started_at or entry.pod_uids:
        return "yes"
    if any(attempt_of(p) == n for p in d.obs.deleted_pods):
        return "yes"
    pods = d.pods_of(n)
    if any((p.get("metadata") or {}).get("deletionTimestamp") for p in pods):
        return "yes"
    if not pods:
        return "no"
    born = [t for p in pods if (t := parse_time(p["metadata"].get("creationTimestamp")))]
    young = not born or (d.now - max(born)).total_seconds() < PLACEMENT_WRITE_SECONDS
    return "maybe" if young else "yes"


def _progressing(
    d: Draft, n: int, entry: Attempt, pods: Sequence[Mapping[str, Any]], running: bool
) -> None:
    scheduled = bool(pods) and all(pod_node(p) for p in pods)
    note = elasticity.size_note(d.spec, entry) if d.spec else ""
    if entry.unschedulable_since or entry.config_error_since:
        d.update(n, unschedulable_since=None, config_error_since=None)
    # The placement and the pods' UIDs are written with Running when the gang runs at once,
    # else once its newest pod is PLACEMENT_WRITE_SECONDS old (see there).
    due = running or _placement_due(d, pods)
    if (scheduled or running) and due:
        d.set_condition(
            ConditionType.CAPACITY_AVAILABLE,
            True,
            "Scheduled",
            f"every pod of attempt {n} is placed{note}",
        )
    # Record the gang's pods before they run: pods that vanish while the operator is down
    # (an image pull takes minutes) are then still a loss of the gang, never an application
    # failure.
    uids = {*(entry.pod_uids or ()), *(pod_uid(p) for p in pods)}
    if uids != set(entry.pod_uids or ()) and due:
        d.update(n, pod_uids=sorted(uids))
    if not running or entry.started_at:
        return
    nodes = sorted({str(pod_node(p)) for p in pods})
    known = [d.obs.nodes[x] for x in nodes if x in d.obs.nodes]
    d.update(
        n,
        started_at=fmt_time(d.now),
        instance_type=next((x.instance_type for x in known if x.instance_type), None),
        zones=[x.zone for x in known if x.zone] or None,
    )
    if announces(d, n):
        d.event("Normal", "AttemptRunning", f"attempt {n} running{note} on {', '.join(nodes)}")
    # Zero-valued preemption series for where the gang runs, so that increase() over
    # spotrun_preemptions_total counts the first preemption there too.
    for itype, zone in sorted({(x.instance_type, x.zone) for x in known}):
        d.metric("placement", instance_type=itype or "", zone=zone or "")
    d.say(f"attempt {n} running{note}")
    _recovery_time(d, n)


def _placement_due(d: Draft, pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the gang's placement (pods placed, their UIDs) is written now although the
    gang does not run yet: once its newest pod is PLACEMENT_WRITE_SECONDS old. Until then a
    requeue comes back for it."""
    born = [t for p in pods if (t := parse_time(p["metadata"].get("creationTimestamp")))]
    if not born:
        return True
    wait = PLACEMENT_WRITE_SECONDS - (d.now - max(born)).total_seconds()
    if wait <= 0:
        return True
    d.requeue(wait)
    return False


def _recovery_time(d: Draft, n: int) -> None:
    """Attempt ``n`` runs after a preempted attempt: time from signal to running. An
    attempt that shrank before it ran (``spec.elasticity``, waitBeforeShrink 0s after an
    interruption) is passed over: the recovery is the smaller attempt's."""
    back = n - 1
    while (e := d.entry(back)) and e.outcome is Outcome.CAPACITY_SHRINK and not e.started_at:
        back -= 1
    prev = d.entry(back)
    last = d.status.last_preemption
    if prev is None or prev.outcome is not Outcome.PREEMPTED or last is None:
        return
    t = parse_time(last.time) if last.attempt == back else None
    if t is not None:
        d.metric("recovery", value=(d.now - t).total_seconds(), signal=str(prev.reason))


def _notice_rebalance(d: Draft, n: int, entry: Attempt) -> None:
    """A rebalance recommendation alone does not restart (by default): say so, once. With
    --replace-on-rebalance it asks for the replacement (capacity_requests) and requeues
    until the move."""
    if d.cfg.restart_on_rebalance:
        return
    replacing = rebalance.replacing(d, n, entry)
    if replacing:
        d.requeue(d.cfg.capacity_poll_seconds)
    then = (
        "asking for a replacement node; the gang moves to it once it holds the run's image"
        if replacing
        else "not restarting on the recommendation alone (a drain of the node, as NTH's "
        "queue mode does, or a spot interruption notice does)"
    )
    for node in rebalance.rebalanced_nodes(d, n):
        d.event(
            "Warning",
            "RebalanceRecommendation",
            f"attempt {n}: node {node} got a {REBALANCE}; {then}; the next attempt "
            "will avoid the node",
            key=f"{REBALANCE}/{n}/{node}",
        )
