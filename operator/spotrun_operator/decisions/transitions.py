"""The run-level steps a decision takes, each a few edits of the :class:`Draft`: record
an attempt's outcome, schedule the next one, adopt an unknown job, end the run."""

from __future__ import annotations

import datetime as dt
from typing import Any

from spotrun_api.display import end_step
from spotrun_api.enums import ConditionType, Outcome, Phase, RunReason
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.facts.common import fmt_time, parse_time
from spotrun_operator.model import builders, reducers


def record(d: Draft, n: int, outcome: Outcome, reason: str, message: str, **fields: Any) -> None:
    """The outcome of attempt ``n``: written before anything acts on it."""
    d.update(
        n,
        outcome=outcome,
        reason=reason,
        message=message[:1024],
        ended_at=fmt_time(d.now),
        end_step=end_step(n, d.progress),
        unschedulable_since=None,
        config_error_since=None,
        **fields,
    )


def schedule_next(d: Draft, n: int, why: str, backoff: bool = True) -> str:
    """Attempt n+1 is due after the backoff (none with ``backoff`` False: a move to warm
    capacity stampedes nothing); returns what to tell the user of it (the loss's event says
    it: the next attempt itself announces nothing, see :func:`announces`)."""
    losses = reducers.consecutive_losses(d.history, d.cfg.backoff_reset_seconds)
    delay = reducers.backoff_seconds(losses, d.cfg, d.obs.rand) if backoff else 0.0
    due = d.now + dt.timedelta(seconds=delay)
    d.update(n, next_attempt_at=fmt_time(due))
    d.say(f"{why}; attempt {n + 1} after a {delay:.1f}s backoff")
    return (
        f"attempt {n + 1} resumes from the newest checkpoint once every rank has stopped "
        f"(backoff {delay:.1f}s)"
    )


def announces(d: Draft, n: int) -> bool:
    """Whether attempt ``n`` gets its own AttemptCreated/AttemptRunning events.

    The first attempt does, and one that differs from the attempt before it (a shrink, a
    regrowth, on-demand after a fallback, ...). A plain recovery does not: the loss's
    event (Preempted, Interrupted, ApplicationFailure) already named the next attempt, and
    the status tells the rest. That keeps a recovery at one event, its writes bounded: a zone event
    that reclaims hundreds of runs does not triple the events the apiserver stores."""
    prev, entry = d.entry(n - 1), d.entry(n)
    if prev is None or entry is None or prev.outcome is None or not prev.outcome.is_loss:
        return True
    return (prev.capacity_type, prev.nodes) != (entry.capacity_type, entry.nodes)


def adopt(d: Draft, n: int) -> None:
    """A PyTorchJob exists that status does not know (status lost or restored): take it
    over as the live attempt instead of creating another."""
    job = d.obs.jobs.get(n) or {}
    created = (job.get("metadata") or {}).get("creationTimestamp") or fmt_time(d.now)
    spec = d.spec
    d.update(
        n,
        created_at=created,
        capacity_type=spec.capacity.type.value if spec else "spot",
        # The job's own size: a shrunk attempt (spec.elasticity) keeps its smaller gang.
        nodes=builders.job_nodes(job) or (spec.nodes if spec else 1),
        gpus=spec.gpus_per_node if spec else 0,
    )
    d.status.attempt = n


def _end_run(d: Draft, phase: Phase, message: str) -> None:
    d.status.phase = phase
    d.say(message)
    d.status.completion_time = fmt_time(d.now)
    d.terminal_now = True


def fail_run(d: Draft, reason: str, message: str) -> None:
    _end_run(d, Phase.FAILED, message)
    d.set_condition(ConditionType.FAILED, True, reason, message)
    d.event("Warning", reason, message)


def succeed_run(d: Draft, message: str) -> None:
    _end_run(d, Phase.SUCCEEDED, message)
    d.set_condition(ConditionType.SUCCEEDED, True, RunReason.COMPLETED, message)
    d.event("Normal", "Succeeded", message)


def finish_attempt(d: Draft, n: int) -> None:
    """Every pod of attempt ``n`` is gone: fix its lost work and cost for good."""
    entry = d.entry(n) or d.update(n)
    fields: dict[str, Any] = {"stopped_at": fmt_time(d.now)}
    if entry.outcome in (Outcome.PREEMPTED, Outcome.QUEUE_PREEMPTED, Outcome.INTERRUPTED):
        lost = reducers.final_lost_work(entry, d.progress)
        fields["lost_work_seconds"] = round(lost, 1)
        last = d.status.last_preemption
        if last is not None and last.attempt == n:
            d.status.last_preemption = last.model_copy(update={"lost_work_seconds": round(lost, 1)})
        d.metric("lost_work", value=lost, signal=str(entry.reason))
    final = entry.model_copy(update=fields)
    fields.update(reducers.cost_fields(reducers.entry_cost(final, d.now, d.prices)))
    d.update(n, **fields)
    due = parse_time(entry.next_attempt_at)
    wait = f"; next attempt in {max(0.0, (due - d.now).total_seconds()):.0f}s" if due else ""
    # No event: a step of the recovery the Preempted event announced (one write fewer per
    # recovery); the status message says it.
    d.say(f"attempt {n}: every pod is gone{wait}")
