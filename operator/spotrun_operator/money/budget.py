"""Budget decisions for ``spec.budget.maxUSD`` (pure: numbers in, a typed decision out).

The operator calls :func:`assess` at each reconcile of a running attempt with the spend
so far (``cost.Cost.total_usd``), the running attempt's burn rate
(``cost.burn_rate_usd_per_second``) and the attempt's checkpoint interval:

- ``ok``: nothing to do.
- ``warn``: spend reached ``warn_fraction`` (80%) of the budget. ``emit_warning`` is True
  only the first time (the operator persists ``decision.warned`` and passes it back).
- ``stop``: the budget is spent, or will be by the end of the next checkpoint interval.
  Stopping *now* lets every rank save on SIGTERM inside the grace period; waiting for the
  next periodic checkpoint would overshoot. The operator stops the gang gracefully and
  sets phase Suspended, reason BudgetExceeded.

While suspended for the budget, :func:`may_resume` with the next attempt's burn rate says
whether a raised budget leaves room for at least one more interval, so a resume is never
followed at once by another stop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from spotrun_api.money import fmt_usd
from spotrun_operator.money.cost import SECONDS_PER_HOUR

DEFAULT_WARN_FRACTION: Final = 0.8

REASON_NO_BUDGET: Final = "NoBudget"
REASON_WITHIN: Final = "WithinBudget"
REASON_WARNING: Final = "BudgetWarning"
REASON_EXCEEDED: Final = "BudgetExceeded"


class BudgetAction(StrEnum):
    OK = "ok"
    WARN = "warn"
    STOP = "stop"


@dataclass(frozen=True)
class BudgetDecision:
    action: BudgetAction
    reason: str
    """CamelCase reason for the condition/event: NoBudget, WithinBudget, BudgetWarning,
    BudgetExceeded."""
    message: str
    """Human text naming the numbers: spend, budget, share, burn rate, projection."""
    max_usd: float | None
    spent_usd: float
    projected_usd: float
    """Spend at the end of the next checkpoint interval (plus grace) at the current burn."""
    emit_warning: bool = False
    """Post the 80% warning event now (first crossing only)."""
    warned: bool = False
    """What to persist and pass back as ``warned``: True once past the warning threshold,
    False again when a raised budget brings the run back under it."""

    @property
    def stop(self) -> bool:
        return self.action is BudgetAction.STOP


def format_duration(seconds: float) -> str:
    """``90s``, ``15m``, ``1h``, ``1h30m``: the way durations appear in the spec."""
    total = round(seconds)
    if total < 60 or total % 60:
        return f"{total}s"
    hours, minutes = divmod(total // 60, 60)
    if hours and minutes:
        return f"{hours}h{minutes}m"
    return f"{hours}h" if hours else f"{minutes}m"


def _share(spent_usd: float, max_usd: float) -> str:
    pct = spent_usd / max_usd
    return f"{fmt_usd(spent_usd)} of the {fmt_usd(max_usd)} budget ({pct:.1%})"


def _rate(usd_per_second: float) -> str:
    return f"{fmt_usd(usd_per_second * SECONDS_PER_HOUR)}/h"


def _check(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def assess(
    *,
    max_usd: float | None,
    spent_usd: float,
    burn_usd_per_second: float,
    checkpoint_interval_seconds: float,
    warned: bool = False,
    grace_seconds: float = 0.0,
    warn_fraction: float = DEFAULT_WARN_FRACTION,
) -> BudgetDecision:
    """ok | warn | stop for a run that has spent ``spent_usd`` and burns on.

    ``grace_seconds`` (terminationGracePeriodSeconds) is added to the horizon because the
    nodes keep billing while the gang saves and exits.
    """
    _check("spent_usd", spent_usd)
    _check("burn_usd_per_second", burn_usd_per_second)
    _check("checkpoint_interval_seconds", checkpoint_interval_seconds)
    _check("grace_seconds", grace_seconds)
    if not 0.0 < warn_fraction <= 1.0:
        raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction}")
    horizon = checkpoint_interval_seconds + grace_seconds
    projected = spent_usd + burn_usd_per_second * horizon
    mk = functools.partial(
        BudgetDecision, max_usd=max_usd, spent_usd=spent_usd, projected_usd=projected
    )
    if max_usd is None:
        return mk(BudgetAction.OK, REASON_NO_BUDGET, f"no budget set; spent {fmt_usd(spent_usd)}")
    if not (math.isfinite(max_usd) and max_usd > 0):
        raise ValueError(f"max_usd must be > 0, got {max_usd}")

    share, rate = _share(spent_usd, max_usd), _rate(burn_usd_per_second)
    resume = "raise spec.budget.maxUSD to resume"
    if spent_usd >= max_usd:
        msg = f"spent {share}: stopping the run; {resume}"
        return mk(BudgetAction.STOP, REASON_EXCEEDED, msg, warned=True)
    if projected > max_usd:
        msg = (
            f"spent {share}; at {rate} the next {format_duration(horizon)} would bring it to "
            f"{fmt_usd(projected)}: stopping now with a checkpoint; {resume}"
        )
        return mk(BudgetAction.STOP, REASON_EXCEEDED, msg, warned=True)
    if spent_usd >= warn_fraction * max_usd:
        eta = ""
        if burn_usd_per_second > 0:
            left = (max_usd - spent_usd) / burn_usd_per_second
            left = round(left / 60) * 60.0 if left >= 60 else left  # an estimate: to the minute
            eta = f"; about {format_duration(left)} left at {rate}"
        msg = f"spent {share}{eta}"
        return mk(BudgetAction.WARN, REASON_WARNING, msg, emit_warning=not warned, warned=True)
    return mk(BudgetAction.OK, REASON_WITHIN, f"spent {share}")


def may_resume(
    *,
    max_usd: float | None,
    spent_usd: float,
    next_burn_usd_per_second: float,
    checkpoint_interval_seconds: float,
    grace_seconds: float = 0.0,
) -> BudgetDecision:
    """Whether a run suspended for its budget may start its next attempt.

    ``next_burn_usd_per_second`` is the rate the next attempt would burn (nodes x price of
    its capacity type). The result's ``action`` is ``stop`` while the budget has no room
    for one checkpoint interval; its message says how much to raise it.
    """
    d = assess(
        max_usd=max_usd,
        spent_usd=spent_usd,
        burn_usd_per_second=next_burn_usd_per_second,
        checkpoint_interval_seconds=checkpoint_interval_seconds,
        grace_seconds=grace_seconds,
        warned=True,  # the warning was posted before the stop
    )
    if d.stop and max_usd is not None:
        horizon = format_duration(checkpoint_interval_seconds + grace_seconds)
        msg = (
            f"spent {_share(spent_usd, max_usd)}; the next attempt burns "
            f"{_rate(next_burn_usd_per_second)}, so resuming for one {horizon} interval needs "
            f"spec.budget.maxUSD above {fmt_usd(d.projected_usd)}"
        )
        return dataclasses.replace(d, message=msg)
    return d
