"""The end of a decision: derive phase, conditions and cost from the drafted status, and
compute the one status diff that is written (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spotrun_api.base import to_json
from spotrun_api.display import display
from spotrun_api.enums import ConditionType, Outcome, Phase
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import OPERATOR_FIELDS, Attempt, CostStatus, TrainingRunStatus
from spotrun_operator.decisions.capacity_requests import plan_capacity_requests
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.spares import plan_spares
from spotrun_operator.facts.common import fmt_time
from spotrun_operator.model import reducers
from spotrun_operator.model.plan import Decision, RunGauges
from spotrun_operator.money.cost import Cost
from spotrun_operator.money.spares import spares_cost

Json = dict[str, Any]


def derive_phase(
    phase: Phase | None, live: Attempt | None, prev: Attempt | None, spec: TrainingRunSpec | None
) -> Phase:
    """status.phase from the live attempt's entry (and the one before it)."""
    if phase is not None and phase.terminal:
        return phase
    suspended = bool(spec and spec.suspend)
    if live is None:
        return Phase.SUSPENDED if suspended else Phase.PENDING
    if live.outcome is not None:
        if live.outcome is Outcome.BUDGET_EXCEEDED:
            return Phase.SUSPENDED
        if suspended and live.stopped_at:
            return Phase.SUSPENDED
        if live.outcome in (Outcome.SUSPENDED, Outcome.QUEUE_PREEMPTED) and not suspended:
            return Phase.PENDING  # waiting to resume: for spec.suspend, or for Kueue
        return Phase.RECOVERING
    if live.started_at:
        return Phase.RUNNING
    recovering = prev is not None and prev.outcome is not None and prev.outcome.recovering_from
    return Phase.RECOVERING if recovering else Phase.PENDING


def phase_conditions(
    phase: Phase, message: str, history: Sequence[Attempt], live: Attempt | None
) -> list[tuple[ConditionType, bool, str, str]]:
    """(type, status, reason, message) of the Running, Recovering and Suspended
    conditions that follow from ``phase``."""
    running = phase is Phase.RUNNING
    cause = next(
        (str(e.outcome) for e in reversed(history) if e.outcome and e.outcome.recovering_from),
        str(phase),
    )
    recovering = phase is Phase.RECOVERING
    suspended = phase is Phase.SUSPENDED
    budget = live is not None and live.outcome is Outcome.BUDGET_EXCEEDED
    return [
        (ConditionType.RUNNING, running, "AttemptRunning" if running else str(phase), message),
        (ConditionType.RECOVERING, recovering, cause if recovering else str(phase), message),
        (ConditionType.SUSPENDED, suspended, "BudgetExceeded" if budget else str(phase), message),
    ]


def status_patch(old: TrainingRunStatus, new: TrainingRunStatus) -> Json | None:
    """The JSON merge patch of the operator's fields that changed (None: nothing to
    write). A field that became unset is written as null, nested ones too."""
    before, after = to_json(old), to_json(new)
    patch = {
        k: _nulled(before.get(k), after.get(k))
        for k in OPERATOR_FIELDS
        if after.get(k) != before.get(k)
    }
    return patch or None


def _nulled(before: Any, after: Any) -> Any:
    """``after`` as a merge patch over ``before``: RFC 7386 merges nested objects and only
    null deletes, so a key gone from a nested object (``spares.replicas`` once no
    placeholder is asked for) is written as null; lists are replaced whole."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return after
    out = {k: _nulled(before.get(k), v) for k, v in after.items()}
    out.update({k: None for k in before if k not in after})
    return out


def _cost_status(d: Draft, cost: Cost, phase: Phase) -> None:
    """status.cost changes when the other fields change, or when it is due
    (:func:`reducers.cost_due`): the spend moves every second, with no write per reconcile."""
    new = cost.status()
    old = d.obs.status.cost
    old_figures = old.model_copy(update={"updated_at": None}) if old else CostStatus()
    others = d.status.model_copy(update={"cost": d.obs.status.cost})
    changed = status_patch(d.obs.status, others) is not None
    due = reducers.cost_due(d.obs.status, d.now, d.cfg)
    if new != old_figures and (changed or due):
        d.status.cost = new.model_copy(update={"updated_at": fmt_time(d.now)})
    if phase is Phase.RUNNING:
        d.requeue(d.cfg.cost_update_seconds)


def _gauges(d: Draft, cost: Cost) -> RunGauges:
    live = d.entry(d.status.attempt or 0)
    interval = live.checkpoint_interval_seconds if live else None
    max_usd = d.spec.max_usd if d.spec else None
    equivalent = cost.on_demand_equivalent_usd
    return RunGauges(
        spot_usd=cost.spot_usd,
        on_demand_usd=cost.on_demand_usd,
        spares_usd=cost.spares_usd if cost.spare_node_seconds else None,
        savings_ratio=1.0 - cost.total_usd / equivalent if equivalent > 0 else None,
        budget_used_ratio=cost.total_usd / max_usd if max_usd else None,
        checkpoint_interval_seconds=float(interval) if interval else None,
        checkpoint_stall_seconds=d.progress.checkpoint_stall_seconds if d.progress else None,
    )


def finish(d: Draft) -> Decision:
    """Derive what follows from the draft, and the one write it needs."""
    s = d.status
    live_n = s.attempt or 0
    live = d.entry(live_n) if live_n else None
    phase = derive_phase(s.phase, live, d.entry(live_n - 1), d.spec)
    s.phase = phase
    s.preemptions = s.preemptions or 0
    s.failures = s.failures or 0
    s.attempt = live_n
    for ctype, on, reason, message in phase_conditions(
        phase, s.message or str(phase), d.history, live
    ):
        d.set_condition(ctype, on, reason, message)
    s.attempts, s.archived = reducers.trim_history(d.history, s.archived, d.cfg.history_limit)
    s.observed_generation = d.obs.ref.generation
    pc = d.obs.pricing_condition
    if pc:
        d.set_condition(pc["type"], pc["status"] == "True", pc["reason"], pc["message"])
    plan_spares(d, phase)
    plan_capacity_requests(d, phase)
    cost = reducers.total_cost(d.history, s.archived, d.now, d.prices)
    cost = cost + spares_cost(s.spares, d.now, d.prices)
    _cost_status(d, cost, phase)
    # The printer columns' strings, from the figures just drafted (spotrun_api.display
    # formats them for `kubectl get tr` and the kubectl plugin alike).
    s.display = display(s)
    progress = d.obs.status.progress
    return Decision(
        status=status_patch(d.obs.status, s),
        actions=d.actions,
        events=d.events,
        metrics=d.metrics,
        requeue_after=d.requeue_after,
        phase=phase,
        checkpoint_time=progress.checkpoint_time if progress else None,
        gauges=_gauges(d, cost),
    )
