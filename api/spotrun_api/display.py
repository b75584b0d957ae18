"""Display strings of a TrainingRun for ``kubectl get tr`` and the ``kubectl spotrun`` plugin
(pure, over the typed status).

Printer columns can only show a field as it is stored, so the operator stores the
human form next to the figures in ``status.display`` (``cost: "$12.40"``); the kubectl
plugin formats with the same functions, so both views always agree.

Also the per-attempt step marks (``startStep``, ``endStep``) the status writer records,
from which the ledger shows the steps each attempt trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from spotrun_api.enums import Outcome
from spotrun_api.money import fmt_usd
from spotrun_api.status import Attempt, Display, Progress, TrainingRunStatus

# Outcomes that interrupted the run (Succeeded is an end, not an interruption).
_LAST_LABELS: Final = {
    Outcome.PREEMPTED: "",
    Outcome.FAILED: "failed",
    Outcome.CONFIG_ERROR: "config-error",
    Outcome.CAPACITY_FALLBACK: "capacity-fallback",
    Outcome.CAPACITY_SHRINK: "capacity-shrink",
    Outcome.CAPACITY_GROW: "capacity-grow",
    Outcome.BUDGET_EXCEEDED: "budget-exceeded",
    Outcome.SUSPENDED: "suspended",
    Outcome.QUEUE_PREEMPTED: "",  # its reason says it: queue-preemption
    Outcome.INTERRUPTED: "",  # its reason says it: pod-deleted, deadline-exceeded, sigterm
    Outcome.INCOMPLETE_GANG: "incomplete-gang",
}


def fmt_percent(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:.0f}%"


def fmt_seconds(seconds: float | None) -> str:
    """A short duration: ``45s``, ``12m30s``, ``3h05m``, ``2d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def total_lost_work(attempts: Sequence[Attempt]) -> float:
    """Seconds of training lost over the recorded attempts (archived ones kept no figure)."""
    return sum(e.lost_work_seconds or 0.0 for e in attempts)


def last_interruption(attempts: Sequence[Attempt]) -> Attempt | None:
    """The newest attempt that ended in anything but success."""
    ended = [e for e in attempts if e.outcome in _LAST_LABELS]
    return max(ended, key=lambda e: e.attempt) if ended else None


def last_label(entry: Attempt) -> str:
    """``spot-interruption a3``, ``failed OOMKilled a2``, ``suspended a4``."""
    kind = _LAST_LABELS.get(entry.outcome, "") if entry.outcome else ""
    reason = entry.reason or ""
    words = [w for w in (kind, reason) if w] or ["preempted"]
    if kind and reason.lower().replace("-", "") == kind.replace("-", ""):
        words = [kind]
    return " ".join([*words, f"a{entry.attempt}"])


def display(status: TrainingRunStatus) -> Display:
    """``status.display``: the strings the printer columns show, from the rest of status."""
    cost = status.cost
    attempts = status.attempts or []
    last = last_interruption(attempts)
    return Display(
        cost=fmt_usd(cost.total_usd if cost else 0.0),
        savings=fmt_percent(cost.savings_percent if cost else None),
        lost_work=fmt_seconds(total_lost_work(attempts)),
        gpu_hours=f"{(cost.gpu_hours if cost else None) or 0.0:.1f}",
        last=last_label(last) if last else "-",
        last_at=(last.ended_at or last.stopped_at) if last else None,
    )


# --- per-attempt step marks ---------------------------------------------------------------


def start_step(progress: Progress | None) -> int:
    """The step a new attempt resumes from: the newest committed checkpoint (0: none)."""
    return (progress.checkpoint_step if progress else None) or 0


def end_step(attempt: int, progress: Progress | None) -> int | None:
    """The last step attempt ``attempt`` reported, or None when the newest progress was
    written by another attempt (this one never reported)."""
    if progress is None or (progress.attempt or 0) != attempt:
        return None
    return progress.step


def steps_done(entry: Attempt, progress: Progress | None) -> int | None:
    """Steps attempt ``entry`` trained: endStep (or the live step) minus startStep."""
    if entry.start_step is None:
        return None
    end = entry.end_step
    if end is None and entry.outcome is None:
        end = end_step(entry.attempt, progress)
    if end is None:
        return None
    return max(0, end - entry.start_step)
