"""The pure state machine of a TrainingRun: :func:`decide` maps what was observed to a
status write plus idempotent actions.

Per attempt N (PyTorchJob ``<run>-aN``) the history entry moves through
created -> startedAt (gang Running) -> outcome + endedAt (recorded *before* acting) ->
stoppedAt (every pod gone, lost work final) -> attempt N+1 created after the backoff.
The live attempt is the highest of the existing PyTorchJobs and ``status.attempt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from spotrun_operator import budget
from spotrun_operator import status as st_
from spotrun_operator.classify import REBALANCE, Kind, Verdict, classify
from spotrun_operator.common import LABEL_ATTEMPT, fmt_time, job_name, parse_time
from spotrun_operator.config import OperatorConfig
from spotrun_operator.plan import Decision, DeleteJob, Observed
from spotrun_operator.recovery import Recovery
from spotrun_operator.spec import RunSpec, parse_spec

TERMINAL: Final = ("Succeeded", "Failed")


def attempt_of(pod: Mapping[str, Any]) -> int:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(LABEL_ATTEMPT, 0))
    except ValueError:
        return 0


def live_attempt(obs: Observed) -> int:
    return max([int(obs.status.get("attempt") or 0), *obs.jobs.keys()])


def decide(obs: Observed, cfg: OperatorConfig) -> Decision:
    """Everything the operator should do about one TrainingRun right now."""
    if obs.deleting:
        return Decision(requeue_after=cfg.resync_seconds)
    try:
        spec: RunSpec | None = parse_spec(dict(obs.spec))
        error = ""
    except (ValueError, KeyError, TypeError) as exc:
        spec, error = None, str(exc)
    if obs.rejected is not None:
        why = obs.rejected
        spec, error = None, f"the apiserver rejected {why.kind} {why.name}: {why.message}"
    r = Recovery(obs, cfg, spec)
    if spec is None:
        if r.phase not in TERMINAL:
            r.fail_run("InvalidSpec", f"invalid spec: {error}")
        return r.finish()
    _decide(r, spec)
    return r.finish()


def _decide(r: Recovery, spec: RunSpec) -> None:
    obs = r.obs
    live = live_attempt(obs)
    if live and r.entry(live) is None:
        r.adopt(live)
    _cleanup_older(r, live)
    if r.phase in TERMINAL:
        if live:
            r.stop_gang(live, terminal=True)
        r.requeue(max(r.cfg.resync_seconds, 300.0))
        return
    if live == 0:
        if not spec.suspend:
            _start_attempt(r, spec, 1)
        return
    entry = r.entry(live)
    assert entry is not None
    if entry.get("outcome"):
        _after_outcome(r, spec, live, entry)
    else:
        _judge(r, spec, live, entry)


def _cleanup_older(r: Recovery, live: int) -> None:
    """Jobs and pods of attempts before the live one must not run (a crash may have left
    them): delete them, gracefully."""
    for n in sorted(r.obs.jobs):
        if n < live:
            r.actions.append(DeleteJob(job_name(r.obs.ref.name, n)))
    for n in sorted({attempt_of(p) for p in r.obs.pods}):
        if n < live:
            r.stop_pods(n)


def _judge(r: Recovery, spec: RunSpec, n: int, entry: dict[str, Any]) -> None:
    obs = r.obs
    if spec.suspend:
        r.record(n, st_.SUSPENDED, "Suspended", "spec.suspend is true")
        r.event("Normal", "Suspending", f"attempt {n}: suspending, stopping the gang gracefully")
        r.stop_gang(n)
        return
    job = obs.jobs.get(n)
    if job is None:
        if obs.missing_refs:
            _config_error(r, n, entry, "missing " + ", ".join(obs.missing_refs))
        else:
            r.update(n, configErrorSince=None)
            r.create_job(n)
        return
    pods = r.pods_of(n)
    verdict = classify(
        pods=pods,
        nodes=obs.nodes,
        expected=int(entry.get("nodes") or spec.nodes),
        now=obs.now,
        job=job,
        deleted_pods=[p for p in obs.deleted_pods if attempt_of(p) == n],
        known_pod_uids=entry.get("podUIDs") or (),
        restart_on_rebalance=r.cfg.restart_on_rebalance,
        failure_settle_seconds=r.cfg.failure_settle_seconds,
        node_lost_grace_seconds=r.cfg.node_lost_grace_seconds,
    )
    _notice_rebalance(r, n, pods)
    kind = verdict.kind
    if kind is Kind.SUCCEEDED:
        r.record(n, st_.SUCCEEDED, "Completed", verdict.message)
        r.succeed_run(f"attempt {n} finished: {verdict.message}")
        r.stop_gang(n, terminal=True)
    elif kind is Kind.PREEMPTED:
        _preempted(r, spec, n, entry, verdict)
    elif kind is Kind.FAILED:
        _failed(r, spec, n, verdict)
    elif kind is Kind.FAILURE_SETTLING:
        assert verdict.until is not None
        r.requeue((verdict.until - obs.now).total_seconds())
    elif kind is Kind.CONFIG_ERROR:
        _config_error(r, n, entry, verdict.message)
    elif kind is Kind.UNSCHEDULABLE:
        _unschedulable(r, spec, n, entry, verdict)
    else:
        _progressing(r, n, entry, pods, running=kind is Kind.RUNNING)
        if verdict.until is not None:
            r.requeue((verdict.until - obs.now).total_seconds())
    if not r.terminal_now and not (r.entry(n) or {}).get("outcome"):
        _budget(r, spec, n)


def _budget(r: Recovery, spec: RunSpec, n: int) -> None:
    """spec.budget.maxUSD: warn at 80%, stop (gracefully, with a checkpoint) before the
    next checkpoint interval would overshoot; the run is Suspended until the budget is
    raised."""
    if spec.max_usd is None:
        return
    entry = r.entry(n) or {}
    d = budget.decide(
        max_usd=spec.max_usd,
        spent_usd=r.total_cost(),
        burn_usd_per_second=r.burn_rate(entry) if entry.get("startedAt") else 0.0,
        checkpoint_interval_seconds=float(entry.get("checkpointIntervalSeconds") or 900),
        warned=r.budget_warned(),
        grace_seconds=spec.termination_grace_period_seconds,
    )
    # The message names the spend, which moves every second: rewrite it no more often than
    # the cost itself (cost_update_seconds), unless the verdict or the spec changed.
    old = st_.get_condition(r.st.get("conditions") or [], "WithinBudget") or {}
    same = (old.get("status"), old.get("reason"), old.get("observedGeneration")) == (
        "False" if d.stop else "True",
        d.reason,
        r.obs.ref.generation,
    )
    if not same or _cost_due(r):
        r.set_condition("WithinBudget", not d.stop, d.reason, d.message)
    if d.emit_warning:
        r.event("Warning", d.reason, d.message)
    if d.stop:
        r.record(n, st_.BUDGET_EXCEEDED, d.reason, d.message)
        r.event("Warning", d.reason, f"attempt {n}: {d.message}")
        r.st["message"] = d.message
        r.stop_gang(n)


def _cost_due(r: Recovery) -> bool:
    """status.cost was last written cost_update_seconds ago or more (or never)."""
    at = parse_time((r.old.get("cost") or {}).get("updatedAt"))
    return at is None or (r.obs.now - at).total_seconds() >= r.cfg.cost_update_seconds


def _preempted(r: Recovery, spec: RunSpec, n: int, entry: dict[str, Any], v: Verdict) -> None:
    now = fmt_time(r.obs.now)
    lost = st_.lost_work_seconds(entry, r.progress, now)
    r.record(
        n,
        st_.PREEMPTED,
        v.reason,
        v.message,
        node=v.node or None,
        zone=v.zone or None,
        instanceType=entry.get("instanceType") or v.instance_type or None,
        interruptedNodes=list(v.nodes) or None,
        lostWorkSeconds=round(lost, 1),
    )
    r.st["preemptions"] = int(r.st.get("preemptions") or 0) + 1
    r.st["lastPreemption"] = {
        "attempt": n,
        "time": now,
        "node": v.node,
        "zone": v.zone,
        "instanceType": entry.get("instanceType") or v.instance_type,
        "signal": v.reason,
        "lostWorkSeconds": round(lost, 1),
    }
    r.metric("preemption", signal=v.reason, instance_type=v.instance_type, zone=v.zone)
    where = f"node {v.node}" + (f" ({v.zone})" if v.zone else "") if v.node else "the gang"
    r.event(
        "Warning",
        "Preempted",
        f"attempt {n}: {v.reason} on {where}: {v.message}; stopping every rank gracefully "
        f"(grace {spec.termination_grace_period_seconds}s)",
    )
    if r.st["preemptions"] >= spec.max_preemptions:
        r.fail_run(
            "MaxPreemptionsReached",
            f"{r.st['preemptions']} preemptions reached spec.maxPreemptions "
            f"{spec.max_preemptions}; last: {v.reason} on {where}",
        )
        r.stop_gang(n, terminal=True)
        return
    r.schedule_next(n, f"preempted by {v.reason} on {where}")
    r.stop_gang(n)


def _failed(r: Recovery, spec: RunSpec, n: int, v: Verdict) -> None:
    r.record(n, st_.FAILED, v.reason, v.message)
    r.st["failures"] = int(r.st.get("failures") or 0) + 1
    r.metric("failure", reason=v.reason)
    r.event("Warning", "ApplicationFailure", f"attempt {n}: {v.reason}: {v.message}")
    if r.st["failures"] >= spec.max_failures:
        r.fail_run(
            "MaxFailuresReached",
            f"{r.st['failures']} application failures reached spec.maxFailures "
            f"{spec.max_failures}; last: {v.message}",
        )
        r.stop_gang(n, terminal=True)
        return
    r.schedule_next(n, f"application failure ({v.reason})")
    r.stop_gang(n)


def _config_error(r: Recovery, n: int, entry: dict[str, Any], message: str) -> None:
    since = parse_time(entry.get("configErrorSince"))
    grace = r.cfg.config_error_grace_seconds
    if since is None:
        since = r.obs.now
        r.update(n, configErrorSince=fmt_time(since))
        r.event(
            "Warning",
            "ConfigurationError",
            f"attempt {n}: {message} (the run fails in {grace:.0f}s unless this is fixed)",
        )
    left = grace - (r.obs.now - since).total_seconds()
    if left > 0:
        r.st["message"] = f"configuration error: {message}"
        r.requeue(left)
        return
    r.record(n, st_.CONFIG_ERROR, "ConfigurationError", message)
    r.fail_run("ConfigurationError", message)
    r.stop_gang(n, terminal=True)


def _unschedulable(r: Recovery, spec: RunSpec, n: int, entry: dict[str, Any], v: Verdict) -> None:
    since = parse_time(entry.get("unschedulableSince"))
    if since is None:
        since = r.obs.now
        r.update(n, unschedulableSince=fmt_time(since), configErrorSince=None)
        r.event("Warning", "Unschedulable", f"attempt {n}: waiting for capacity: {v.message}")
    r.set_condition("CapacityAvailable", False, "Unschedulable", v.message)
    fallback = spec.on_demand_fallback_after
    if fallback is None or spec.capacity_type != "spot" or entry.get("capacityType") != "spot":
        return
    left = fallback - (r.obs.now - since).total_seconds()
    if left > 0:
        r.requeue(left)
        return
    msg = f"spot capacity unschedulable for {fallback:.0f}s; the next attempt runs on on-demand"
    r.record(
        n, st_.CAPACITY_FALLBACK, "Unschedulable", v.message, nextAttemptAt=fmt_time(r.obs.now)
    )
    r.event("Warning", "CapacityFallback", f"attempt {n}: {msg}")
    r.st["message"] = msg
    r.stop_gang(n)


def _progressing(
    r: Recovery, n: int, entry: dict[str, Any], pods: Sequence[Mapping[str, Any]], running: bool
) -> None:
    scheduled = bool(pods) and all((p.get("spec") or {}).get("nodeName") for p in pods)
    if entry.get("unschedulableSince") or entry.get("configErrorSince"):
        r.update(n, unschedulableSince=None, configErrorSince=None)
    if scheduled or running:
        r.set_condition(
            "CapacityAvailable", True, "Scheduled", f"every pod of attempt {n} is placed"
        )
    if not running or entry.get("startedAt"):
        return
    nodes = sorted({str((p.get("spec") or {}).get("nodeName")) for p in pods})
    known = [r.obs.nodes[x] for x in nodes if x in r.obs.nodes]
    r.update(
        n,
        startedAt=fmt_time(r.obs.now),
        podUIDs=sorted(str((p.get("metadata") or {}).get("uid")) for p in pods),
        instanceType=next((x.instance_type for x in known if x.instance_type), None),
        zones=[x.zone for x in known if x.zone] or None,
    )
    r.event("Normal", "AttemptRunning", f"attempt {n} running on {', '.join(nodes)}")
    # Zero-valued preemption series for where the gang runs, so that increase() over
    # spotrun_preemptions_total counts the first preemption there too.
    for itype, zone in sorted({(x.instance_type, x.zone) for x in known}):
        r.metric("placement", instance_type=itype or "", zone=zone or "")
    r.st["message"] = f"attempt {n} running"
    prev = r.entry(n - 1)
    last = r.st.get("lastPreemption") or {}
    if prev and prev.get("outcome") == st_.PREEMPTED and last.get("attempt") == n - 1:
        t = parse_time(last.get("time"))
        if t is not None:
            r.metric(
                "recovery", value=(r.obs.now - t).total_seconds(), signal=str(prev.get("reason"))
            )


def _notice_rebalance(r: Recovery, n: int, pods: Sequence[Mapping[str, Any]]) -> None:
    """A rebalance recommendation alone does not restart (by default): say so, once."""
    if r.cfg.restart_on_rebalance:
        return
    for p in pods:
        node = r.obs.nodes.get(str((p.get("spec") or {}).get("nodeName")))
        if node and "aws-node-termination-handler/rebalance-recommendation" in node.taints:
            r.event(
                "Warning",
                "RebalanceRecommendation",
                f"attempt {n}: node {node.name} got a {REBALANCE}; not restarting (only a "
                "spot interruption notice does); the next attempt will avoid the node",
                key=f"{REBALANCE}/{n}/{node.name}",
            )


def _after_outcome(r: Recovery, spec: RunSpec, n: int, entry: dict[str, Any]) -> None:
    r.stop_gang(n)
    if not r.gang_gone(n):
        r.requeue(2.0)
        return
    if not entry.get("stoppedAt"):
        r.finish_attempt(n)
        entry = r.entry(n) or entry
    if spec.suspend:
        return
    if entry.get("outcome") == st_.BUDGET_EXCEEDED:
        nxt = r.next_entry_preview(n + 1)
        d = budget.may_resume(
            max_usd=spec.max_usd,
            spent_usd=r.total_cost(),
            next_burn_usd_per_second=r.burn_rate(nxt),
            checkpoint_interval_seconds=float(entry.get("checkpointIntervalSeconds") or 900),
            grace_seconds=spec.termination_grace_period_seconds,
        )
        if d.stop:
            r.st["message"] = d.message
            r.set_condition("WithinBudget", False, d.reason, d.message)
            return
        r.set_condition("WithinBudget", True, d.reason, d.message)
        r.event("Normal", "Resuming", f"budget raised: {d.message}; starting the next attempt")
        _start_attempt(r, spec, n + 1)
        return
    due = parse_time(entry.get("nextAttemptAt")) or r.obs.now
    wait = (due - r.obs.now).total_seconds()
    if wait > 0 and entry.get("outcome") != st_.SUSPENDED:
        r.st["message"] = f"attempt {n + 1} starts at {fmt_time(due)} (backoff)"
        r.requeue(wait)
        return
    if entry.get("outcome") == st_.SUSPENDED:
        r.event("Normal", "Resuming", "spec.suspend is false: starting the next attempt")
    _start_attempt(r, spec, n + 1)


def _start_attempt(r: Recovery, spec: RunSpec, n: int) -> None:
    prev = r.entry(n - 1)
    fallback = prev is not None and prev.get("outcome") == st_.CAPACITY_FALLBACK
    capacity = "on-demand" if spec.capacity_type == "on-demand" or fallback else "spot"
    interval = st_.checkpoint_interval_seconds(
        spec.checkpoint.interval, r.history, r.cfg.checkpoint_cost_seconds
    )
    r.history = st_.upsert_attempt(
        r.history,
        {
            "attempt": n,
            "capacityType": capacity,
            "nodes": spec.nodes,
            "gpus": spec.gpus_per_node,
            "createdAt": fmt_time(r.obs.now),
            "checkpointIntervalSeconds": interval,
        },
    )
    r.st["attempt"] = n
    r.st.setdefault("startTime", fmt_time(r.obs.now))
    r.st["message"] = f"attempt {n} created on {capacity}"
    r.event(
        "Normal",
        "AttemptCreated",
        f"creating attempt {n} (PyTorchJob {job_name(r.obs.ref.name, n)}) on {capacity}: "
        f"{spec.nodes} node(s) x {spec.gpus_per_node} GPUs, {spec.procs_per_node} rank(s) per "
        f"node, resuming from {spec.checkpoint.path}",
    )
    if r.obs.missing_refs:
        _config_error(r, n, r.entry(n) or {}, "missing " + ", ".join(r.obs.missing_refs))
        return
    r.create_job(n)
