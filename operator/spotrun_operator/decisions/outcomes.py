"""What each verdict on the live attempt does to the draft: a preemption, an application
failure, a configuration error, missing capacity, the budget; and what follows an
attempt's outcome once its gang is gone (pure)."""

from __future__ import annotations

from spotrun_api.display import start_step
from spotrun_api.enums import CapacityType, ConditionType, Outcome, RunReason
from spotrun_api.naming import job_name
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt, LastPreemption, NodeInterruption
from spotrun_operator.decisions import elasticity, late_losses
from spotrun_operator.decisions.children import create_job, gang_gone, stop_gang
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.transitions import (
    announces,
    fail_run,
    finish_attempt,
    record,
    schedule_next,
)
from spotrun_operator.facts import pools
from spotrun_operator.facts.common import fmt_time, parse_time
from spotrun_operator.judging.classify import Verdict
from spotrun_operator.model import reducers
from spotrun_operator.money import budget
from spotrun_operator.money.spares import spares_burn_usd_per_second, spares_cost


def where_of(v: Verdict) -> str:
    return f"node {v.node}" + (f" ({v.zone})" if v.zone else "") if v.node else "the gang"


def preempted(
    d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt, v: Verdict, warm: bool = False
) -> None:
    """``warm``: the gang moves to a replacement that is already warm (a rebalance or notice
    move, ``notice_ride.warm_move``): the next attempt is due at once, no backoff."""
    now = fmt_time(d.now)
    lost = round(reducers.lost_work_seconds(entry, d.progress, now), 1)
    itype = entry.instance_type or v.instance_type
    record(
        d,
        n,
        Outcome.PREEMPTED,
        v.reason,
        v.message,
        node=v.node or None,
        zone=v.zone or None,
        instance_type=itype or None,
        interrupted_nodes=list(v.nodes) or None,
        interruptions=[NodeInterruption(node=x, signal=sig) for x, sig in v.node_signals] or None,
        lost_work_seconds=lost,
    )
    count = (d.status.preemptions or 0) + 1
    d.status.preemptions = count
    # From the signal's own timestamp where it has one (never after this decision): the
    # recovery time (spotrun_recovery_seconds) then includes the time to detect it.
    signal_at = min(v.signal_at, d.now) if v.signal_at else d.now
    d.status.last_preemption = LastPreemption(
        attempt=n,
        time=fmt_time(signal_at),
        node=v.node,
        zone=v.zone,
        instance_type=itype,
        signal=v.reason,
        lost_work_seconds=lost,
    )
    d.metric("preemption", signal=v.reason, instance_type=v.instance_type, zone=v.zone)
    where = where_of(v)
    stopping = (
        f"attempt {n}: {v.reason} on {where}: {v.message}; stopping every rank gracefully "
        f"(grace {spec.termination_grace_period_seconds}s)"
    )
    if count >= spec.max_preemptions:
        d.event("Warning", "Preempted", stopping)
        fail_run(
            d,
            RunReason.MAX_PREEMPTIONS,
            f"{count} preemptions reached spec.maxPreemptions "
            f"{spec.max_preemptions}; last: {v.reason} on {where}",
        )
        stop_gang(d, n, terminal=True)
        return
    then = schedule_next(d, n, f"preempted by {v.reason} on {where}", backoff=not warm)
    d.event("Warning", "Preempted", f"{stopping}; {then}")
    stop_gang(d, n)


def interrupted(d: Draft, n: int, entry: Attempt, v: Verdict) -> None:
    """Stopped from outside with no evidence of the infrastructure (signals.NO_BUDGET_SIGNALS):
    neither budget is spent; the gang stops, the next attempt resumes from the checkpoint the
    ranks saved on SIGTERM. The backoff still grows with each one (Outcome.is_loss)."""
    lost = round(reducers.lost_work_seconds(entry, d.progress, fmt_time(d.now)), 1)
    record(
        d,
        n,
        Outcome.INTERRUPTED,
        v.reason,
        v.message,
        node=v.node or None,
        zone=v.zone or None,
        lost_work_seconds=lost,
    )
    then = schedule_next(d, n, f"interrupted ({v.reason})")
    d.event(
        "Warning",
        "Interrupted",
        f"attempt {n}: {v.reason} on {where_of(v)}: {v.message}; not the infrastructure, not "
        f"the application: no budget spent; stopping every rank gracefully; {then}",
    )
    stop_gang(d, n)


def incomplete_gang(d: Draft, n: int, v: Verdict) -> None:
    """The training operator gave up on a gang that could not be placed: capacity, not the
    application and not an interruption. No budget, no backoff: the next attempt is
    created as soon as every pod of its gang can be placed (elasticity.unplaceable)."""
    record(d, n, Outcome.INCOMPLETE_GANG, v.reason, v.message, next_attempt_at=fmt_time(d.now))
    d.set_condition(ConditionType.CAPACITY_AVAILABLE, False, v.reason, v.message)
    d.event(
        "Warning",
        v.reason,
        f"attempt {n}: {v.message}; capacity, not the application: no budget spent; "
        f"attempt {n + 1} is created once every pod of its gang can be placed",
    )
    d.say(f"attempt {n}: {v.message}")
    stop_gang(d, n)


def failed(d: Draft, spec: TrainingRunSpec, n: int, v: Verdict) -> None:
    record(d, n, Outcome.FAILED, v.reason, v.message)
    count = (d.status.failures or 0) + 1
    d.status.failures = count
    d.metric("failure", reason=v.reason)
    failure = f"attempt {n}: {v.reason}: {v.message}"
    if count >= spec.max_failures:
        d.event("Warning", "ApplicationFailure", failure)
        fail_run(
            d,
            RunReason.MAX_FAILURES,
            f"{count} application failures reached spec.maxFailures "
            f"{spec.max_failures}; last: {v.message}",
        )
        stop_gang(d, n, terminal=True)
        return
    then = schedule_next(d, n, f"application failure ({v.reason})")
    d.event("Warning", "ApplicationFailure", f"{failure}; {then}")
    stop_gang(d, n)


def config_error(d: Draft, n: int, entry: Attempt, message: str) -> None:
    since = parse_time(entry.config_error_since)
    grace = d.cfg.config_error_grace_seconds
    if since is None:
        since = d.now
        d.update(n, config_error_since=fmt_time(since))
        d.event(
            "Warning",
            "ConfigurationError",
            f"attempt {n}: {message} (the run fails in {grace:.0f}s unless this is fixed)",
        )
    left = grace - (d.now - since).total_seconds()
    if left > 0:
        d.say(f"configuration error: {message}")
        d.requeue(left)
        return
    record(d, n, Outcome.CONFIG_ERROR, "ConfigurationError", message)
    fail_run(d, RunReason.CONFIG_ERROR, message)
    stop_gang(d, n, terminal=True)


def unschedulable(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt, v: Verdict) -> None:
    since = parse_time(entry.unschedulable_since)
    if since is None:
        since = d.now
        d.update(n, unschedulable_since=fmt_time(since), config_error_since=None)
        d.event("Warning", "Unschedulable", f"attempt {n}: waiting for capacity: {v.message}")
    d.set_condition(ConditionType.CAPACITY_AVAILABLE, False, "Unschedulable", v.message)
    waited = (d.now - since).total_seconds()
    if not _fall_back(d, spec, n, entry, v, waited):
        elasticity.shrink_if_due(d, spec, n, entry, v, waited)


def _fall_back(
    d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt, v: Verdict, waited: float
) -> bool:
    """spec.capacity.onDemandFallbackAfter: True when attempt ``n`` ended to fall back."""
    fallback = spec.fallback_seconds
    spot = CapacityType.SPOT.value
    if fallback is None or spec.capacity.type is not CapacityType.SPOT:
        return False
    if entry.capacity_type != spot:
        return False
    left = fallback - waited
    if left > 0:
        d.requeue(left)
        return False
    msg = f"spot capacity unschedulable for {fallback:.0f}s; the next attempt runs on on-demand"
    record(
        d,
        n,
        Outcome.CAPACITY_FALLBACK,
        "Unschedulable",
        v.message,
        next_attempt_at=fmt_time(d.now),
    )
    d.event("Warning", "CapacityFallback", f"attempt {n}: {msg}")
    d.say(msg)
    stop_gang(d, n)
    return True


def _spent(d: Draft) -> float:
    """Every attempt's spend plus the warm spares' (docs/cost.md)."""
    attempts = reducers.total_cost(d.history, d.status.archived, d.now, d.prices)
    return (attempts + spares_cost(d.status.spares, d.now, d.prices)).total_usd


def _budget_warned(d: Draft) -> bool:
    cond = reducers.get_condition(d.status.conditions, ConditionType.WITHIN_BUDGET)
    return cond is not None and cond.reason in ("BudgetWarning", "BudgetExceeded")


def check_budget(d: Draft, spec: TrainingRunSpec, n: int) -> None:
    """spec.budget.maxUSD: warn at 80%, stop (gracefully, with a checkpoint) before the
    next checkpoint interval would overshoot; the run is Suspended until the budget is
    raised."""
    if spec.max_usd is None:
        return
    entry = d.entry(n) or Attempt(attempt=n)
    burn = reducers.burn_rate(entry, d.now, d.prices) if entry.started_at else 0.0
    verdict = budget.assess(
        max_usd=spec.max_usd,
        spent_usd=_spent(d),
        burn_usd_per_second=burn + spares_burn_usd_per_second(d.status.spares, d.prices),
        checkpoint_interval_seconds=float(reducers.interval_of(entry)),
        warned=_budget_warned(d),
        grace_seconds=spec.termination_grace_period_seconds,
    )
    # The message names the spend, which moves every second: rewrite it no more often than
    # the cost itself (cost_update_seconds), unless the verdict or the spec changed.
    old = reducers.get_condition(d.status.conditions, ConditionType.WITHIN_BUDGET)
    same = old is not None and (old.status, old.reason, old.observed_generation) == (
        "False" if verdict.stop else "True",
        verdict.reason,
        d.obs.ref.generation,
    )
    if not same or reducers.cost_due(d.obs.status, d.now, d.cfg):
        d.set_condition(
            ConditionType.WITHIN_BUDGET, not verdict.stop, verdict.reason, verdict.message
        )
    if verdict.emit_warning:
        d.event("Warning", verdict.reason, verdict.message)
    if verdict.stop:
        record(d, n, Outcome.BUDGET_EXCEEDED, verdict.reason, verdict.message)
        d.event("Warning", verdict.reason, f"attempt {n}: {verdict.message}")
        d.say(verdict.message)
        stop_gang(d, n)


def after_outcome(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> None:
    """Attempt ``n`` has an outcome: stop its gang; once gone, start the next attempt
    (after the backoff, or when the budget or spec.suspend allows)."""
    stop_gang(d, n)
    if entry.outcome is Outcome.PREEMPTED:
        entry = late_losses.record_late_losses(d, n, entry)
    if not gang_gone(d, n):
        d.requeue(2.0)
        return
    if not entry.stopped_at:
        finish_attempt(d, n)
        entry = d.entry(n) or entry
    if spec.suspend:
        return
    if entry.outcome is Outcome.BUDGET_EXCEEDED:
        _resume_within_budget(d, spec, n, entry)
        return
    due = parse_time(entry.next_attempt_at) or d.now
    wait = (due - d.now).total_seconds()
    if wait > 0 and entry.outcome is not Outcome.SUSPENDED:
        d.say(f"attempt {n + 1} starts at {fmt_time(due)} (backoff)")
        d.requeue(wait)
        return
    if entry.outcome is Outcome.SUSPENDED:
        d.event("Normal", "Resuming", "spec.suspend is false: starting the next attempt")
    start_attempt(d, spec, n + 1)


def next_entry_preview(d: Draft, spec: TrainingRunSpec, n: int) -> Attempt:
    """The history entry attempt ``n`` would get (to price it before creating it)."""
    last = d.entry(n - 1)
    return Attempt(
        attempt=n,
        capacity_type=spec.capacity.type.value,
        nodes=spec.nodes,
        gpus=spec.gpus_per_node,
        instance_type=(last.instance_type if last else None) or spec.capacity.instance_types[0],
        zones=last.zones if last else None,
    )


def _resume_within_budget(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> None:
    preview = next_entry_preview(d, spec, n + 1)
    burn = reducers.burn_rate(preview, d.now, d.prices)
    # The warm spares come back with the run, each a node like the gang's.
    burn *= 1.0 + spec.capacity.warm_spares / max(1, preview.nodes or spec.nodes)
    verdict = budget.may_resume(
        max_usd=spec.max_usd,
        spent_usd=_spent(d),
        next_burn_usd_per_second=burn,
        checkpoint_interval_seconds=float(reducers.interval_of(entry)),
        grace_seconds=spec.termination_grace_period_seconds,
    )
    if verdict.stop:
        d.say(verdict.message)
        d.set_condition(ConditionType.WITHIN_BUDGET, False, verdict.reason, verdict.message)
        return
    d.set_condition(ConditionType.WITHIN_BUDGET, True, verdict.reason, verdict.message)
    d.event("Normal", "Resuming", f"budget raised: {verdict.message}; starting the next attempt")
    start_attempt(d, spec, n + 1)


def _interval(d: Draft, spec: TrainingRunSpec, n: int, capacity: str, nodes: int) -> int:
    """SPOTRUN_CHECKPOINT_INTERVAL_SECONDS of attempt ``n``: the spec's, or for ``auto``
    Young/Daly from the run's measured stall and the MTBF of the pools it will likely run in
    (the previous attempt's instance type and zones; else the first type, any zone)."""
    last = d.entry(n - 1)
    known = last if last and last.instance_type and last.capacity_type == capacity else None
    first = next(iter(spec.capacity.instance_types), "")
    itype = (known.instance_type if known else None) or first
    zones = known.zones if known else None
    return pools.auto_interval(
        spec.checkpoint.interval,
        history=d.history,
        planned=pools.planned_pools(itype, zones, capacity, nodes) if itype else (),
        tally=d.obs.pools,
        stall_seconds=d.progress.checkpoint_stall_seconds if d.progress else None,
        checkpoint_cost_seconds=d.cfg.checkpoint_cost_seconds,
    )


def start_attempt(d: Draft, spec: TrainingRunSpec, n: int) -> None:
    prev = d.entry(n - 1)
    capacity = elasticity.attempt_capacity(spec, prev)
    nodes = elasticity.attempt_size(spec, prev)
    interval = _interval(d, spec, n, capacity, nodes)
    entry = Attempt(
        attempt=n,
        capacity_type=capacity,
        nodes=nodes,
        gpus=spec.gpus_per_node,
        created_at=fmt_time(d.now),
        checkpoint_interval_seconds=interval,
        start_step=start_step(d.progress),
    )
    d.status.attempts = reducers.upsert_attempt(d.history, entry)
    d.status.attempt = n
    d.status.start_time = d.status.start_time or fmt_time(d.now)
    note = elasticity.size_note(spec, entry)
    d.say(f"attempt {n} created on {capacity}{note}")
    size = f"{spec.nodes} node(s)" if not note else f"{nodes} of {spec.nodes} nodes (shrunk)"
    if announces(d, n):
        d.event(
            "Normal",
            "AttemptCreated",
            f"creating attempt {n} (PyTorchJob {job_name(d.obs.ref.name, n)}) on {capacity}: "
            f"{size} x {spec.gpus_per_node} GPUs, {spec.ranks_per_pod} rank(s) per "
            f"node, resuming from {spec.checkpoint.path}",
        )
    create_when_placeable(d, spec, n, entry)


def create_when_placeable(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt) -> None:
    """Create attempt ``n``'s PyTorchJob once every object it references exists and every
    pod of its gang can be placed (elasticity.unplaceable); until then it waits as an
    unschedulable attempt does (onDemandFallbackAfter and waitBeforeShrink count)."""
    if d.obs.missing_refs:
        config_error(d, n, entry, "missing " + ", ".join(d.obs.missing_refs))
        return
    if entry.config_error_since:
        entry = d.update(n, config_error_since=None)
    short = elasticity.unplaceable(d, spec, n, entry)
    if short is not None:
        # The apiserver still judges the spec now: a refused one fails the run at once
        # (InvalidSpec), not once capacity comes (a bad nodeSelector fits no node at all).
        create_job(d, n, validate_only=True)
        unschedulable(d, spec, n, entry, short)
        d.requeue(d.cfg.capacity_poll_seconds)
        return
    create_job(d, n)
