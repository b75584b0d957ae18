"""Pure reducers over the typed ``TrainingRun.status``: the attempt history, conditions,
backoff, lost work, checkpoint interval and cost.

``status.attempts`` is keyed by attempt number. The operator writes an attempt's outcome
there (and bumps the counters in the same write) before it acts on it, and only when the
entry has no outcome yet: that single compare-and-swap write is what makes counting
exactly-once across operator crashes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from spotrun_api.contract import DEFAULT_CHECKPOINT_INTERVAL_SECONDS
from spotrun_api.enums import ConditionStatus, Outcome
from spotrun_api.status import Archived, Attempt, Condition, Progress, TrainingRunStatus
from spotrun_operator.facts.common import fmt_time, parse_time
from spotrun_operator.facts.config import OperatorConfig
from spotrun_operator.money.cost import Cost, Price, Prices, attempt_cost

PriceSource = Mapping[str, Price] | Prices
History = list[Attempt]


def get_attempt(history: Sequence[Attempt], n: int) -> Attempt | None:
    """A copy of attempt ``n``'s entry (edit it through :func:`upsert_attempt`)."""
    return next((e.model_copy(deep=True) for e in history if e.attempt == n), None)


def upsert_attempt(history: Sequence[Attempt], entry: Attempt) -> History:
    """History with ``entry`` replacing the one of the same number, sorted by number."""
    rest = [e for e in history if e.attempt != entry.attempt]
    return sorted([*rest, entry], key=lambda e: e.attempt)


def cost_of(fields: Attempt | Archived | None) -> Cost:
    """The frozen spend of an attempt or of the archived ones (absent fields count 0)."""
    return Cost.of(fields)


def cost_fields(cost: Cost) -> dict[str, float]:
    """Attribute names and values that freeze ``cost`` into an Attempt or Archived."""
    return cost.frozen_fields()


def trim_history(
    history: Sequence[Attempt], archived: Archived | None, limit: int
) -> tuple[History, Archived | None]:
    """Keep the newest ``limit`` attempts; fold the cost of the dropped ones into
    ``archived`` so totals survive. Only finished attempts (stoppedAt) are dropped."""
    keep = list(history)
    arch = archived
    while len(keep) > max(1, limit) and keep[0].stopped_at:
        old = keep.pop(0)
        total = cost_of(arch) + cost_of(old)
        count = (arch.attempts or 0) if arch else 0
        arch = Archived(attempts=count + 1, **cost_fields(total))
    return keep, arch


# --- conditions ----------------------------------------------------------------------


def get_condition(conditions: Sequence[Condition] | None, ctype: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == ctype), None)


def set_condition(
    conditions: Sequence[Condition] | None,
    ctype: str,
    status: bool | str,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int,
) -> list[Condition]:
    """Conditions with ``ctype`` set in place (a condition left as it was keeps the list
    as it was: no write); lastTransitionTime moves only when status changes."""
    value = ConditionStatus(status if isinstance(status, str) else str(bool(status)))
    old = get_condition(conditions, ctype)
    new = Condition(
        type=ctype,
        status=value,
        reason=reason,
        message=message[:1024],
        last_transition_time=(
            old.last_transition_time if old is not None and old.status == value else fmt_time(now)
        ),
        observed_generation=generation,
    )
    out = [new if c.type == ctype else c for c in conditions or ()]
    return out if old is not None else [*out, new]


# --- backoff ---------------------------------------------------------------------------


def seconds_between(start: str | None, end: str | None) -> float:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return 0.0
    return max(0.0, (b - a).total_seconds())


def consecutive_losses(history: Sequence[Attempt], reset_seconds: float) -> int:
    """Trailing attempts lost (preempted or failed) without a long healthy run between."""
    k = 0
    for e in reversed(history):
        if e.outcome is None:
            continue  # the live attempt
        if not e.outcome.is_loss:
            break
        k += 1
        if seconds_between(e.started_at, e.ended_at) >= reset_seconds:
            break
    return k


def backoff_seconds(losses: int, cfg: OperatorConfig, rand: float) -> float:
    """Delay before the next attempt after ``losses`` consecutive losses.

    base * factor**(losses-1), capped, then +-jitter (``rand`` in [0, 1)), so that many
    runs preempted together do not stampede the scheduler at the same instant."""
    if losses <= 0:
        return 0.0
    raw = min(
        cfg.backoff_max_seconds, cfg.backoff_base_seconds * cfg.backoff_factor ** (losses - 1)
    )
    return max(0.0, raw * (1.0 + cfg.backoff_jitter * (2.0 * rand - 1.0)))


# --- work, intervals, cost -----------------------------------------------------------


def lost_work_seconds(entry: Attempt, progress: Progress | None, at: str) -> float:
    """Training time of ``entry`` not covered by a committed checkpoint at time ``at``.

    Work counts from when the gang ran (startedAt); a checkpoint older than that covers
    none of this attempt's work."""
    start = parse_time(entry.started_at)
    if start is None:
        return 0.0
    ckpt = parse_time(progress.checkpoint_time if progress else None)
    since = max(start, ckpt) if ckpt else start
    end = parse_time(at)
    assert end is not None
    return max(0.0, (end - since).total_seconds())


def final_lost_work(entry: Attempt, progress: Progress | None) -> float:
    """Lost work once the gang is gone: zero when this attempt committed a checkpoint at or
    after the interruption (it saved inside the notice), else the figure at the signal."""
    provisional = entry.lost_work_seconds or 0.0
    if progress is None:
        return provisional
    ckpt, ended = parse_time(progress.checkpoint_time), parse_time(entry.ended_at)
    if ckpt and ended and ckpt >= ended and (progress.attempt or 0) == entry.attempt:
        return 0.0
    return provisional


def interval_of(entry: Attempt | None) -> int:
    """The checkpoint interval an attempt was given (the default when unknown)."""
    return (entry.checkpoint_interval_seconds if entry else None) or (
        DEFAULT_CHECKPOINT_INTERVAL_SECONDS
    )


def entry_cost(entry: Attempt, now: dt.datetime, prices: PriceSource) -> Cost:
    """Frozen cost of a finished attempt, or the running figure of a live one.

    An attempt costs from the moment its whole gang ran (startedAt) to the moment its
    last pod was gone (stoppedAt; endedAt or now until then)."""
    if entry.frozen_cost:
        return cost_of(entry)
    if not entry.started_at:
        return Cost()
    nodes = entry.nodes or 1
    end = entry.stopped_at or entry.ended_at or fmt_time(now)
    return attempt_cost(
        seconds=seconds_between(entry.started_at, end),
        nodes=nodes,
        gpus_per_node=entry.gpus or 0,
        instance_type=entry.instance_type or "",
        capacity_type="on-demand" if entry.capacity_type == "on-demand" else "spot",
        prices=prices,
        zones=list(entry.zones or ())[:nodes],
    )


def burn_rate(entry: Attempt, now: dt.datetime, prices: PriceSource) -> float:
    """USD per second an attempt shaped like ``entry`` burns while it runs."""
    probe = entry.model_copy(
        update={"started_at": fmt_time(now), "spot_usd": None, "stopped_at": None, "ended_at": None}
    )
    return entry_cost(probe, now + dt.timedelta(hours=1), prices).total_usd / 3600.0


def total_cost(
    history: Sequence[Attempt], archived: Archived | None, now: dt.datetime, prices: PriceSource
) -> Cost:
    total = cost_of(archived)
    for e in history:
        total = total + entry_cost(e, now, prices)
    return total


def recent_interrupted_nodes(
    history: Sequence[Attempt], now: dt.datetime, window: float
) -> list[str]:
    """Nodes behind recent preemptions: the next attempt's affinity avoids them."""
    out: list[str] = []
    for e in history:
        ended = parse_time(e.ended_at)
        recent = ended is not None and (now - ended).total_seconds() <= window
        if e.outcome is Outcome.PREEMPTED and e.node and recent:
            out.extend([e.node, *(e.interrupted_nodes or [])])
    return sorted(set(out))


def cost_due(status: TrainingRunStatus, now: dt.datetime, cfg: OperatorConfig) -> bool:
    """status.cost may be rewritten for the spend alone: never written, the trainer
    committed a checkpoint since (its own write changed the run anyway), or
    cost_update_seconds passed. Between checkpoints an idle run costs no write."""
    cost = status.cost
    at = parse_time(cost.updated_at if cost else None)
    if at is None:
        return True
    saved = parse_time(status.progress.checkpoint_time if status.progress else None)
    return (saved is not None and saved > at) or (now - at).total_seconds() >= (
        cfg.cost_update_seconds
    )
