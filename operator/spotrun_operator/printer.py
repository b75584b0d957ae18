"""Display strings of a TrainingRun for ``kubectl get tr`` and the ``kubectl spotrun`` plugin
(pure, no I/O).

Printer columns can only show a field as it is stored, so the operator stores the
human form next to the figures in ``status.display`` (``cost: "$12.40"``); the kubectl
plugin formats with the same functions, so both views always agree.

Also the per-attempt step marks (``startStep``, ``endStep``) the status writer records,
from which the ledger shows the steps each attempt trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

# Outcomes that interrupted the run (Succeeded is an end, not an interruption).
_LAST_LABELS: Final = {
    "Preempted": "",
    "Failed": "failed",
    "ConfigurationError": "config-error",
    "CapacityFallback": "capacity-fallback",
    "BudgetExceeded": "budget-exceeded",
    "Suspended": "suspended",
}


def fmt_usd(usd: float | None) -> str:
    """``$12.40``; thousands grouped (``$1,204.00``); ``-`` when unknown."""
    if usd is None:
        return "-"
    return f"${usd:,.2f}"


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


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def total_lost_work(attempts: Sequence[Mapping[str, Any]]) -> float:
    """Seconds of training lost over the recorded attempts (archived ones kept no figure)."""
    return sum(float(e.get("lostWorkSeconds") or 0.0) for e in attempts)


def last_interruption(attempts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest attempt that ended in anything but success."""
    ended = [e for e in attempts if e.get("outcome") in _LAST_LABELS]
    return max(ended, key=lambda e: int(e["attempt"])) if ended else None


def last_label(entry: Mapping[str, Any]) -> str:
    """``spot-interruption a3``, ``failed OOMKilled a2``, ``suspended a4``."""
    outcome = str(entry.get("outcome") or "")
    kind = _LAST_LABELS.get(outcome, outcome.lower())
    reason = str(entry.get("reason") or "")
    words = [w for w in (kind, reason) if w] or ["preempted"]
    if kind and reason.lower().replace("-", "") == kind.replace("-", ""):
        words = [kind]
    return " ".join([*words, f"a{int(entry['attempt'])}"])


def display(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status.display``: the strings the printer columns show, from the rest of status."""
    cost = status.get("cost") or {}
    attempts = list(status.get("attempts") or [])
    out: dict[str, Any] = {
        "cost": fmt_usd(_float(cost.get("totalUSD")) if cost else 0.0),
        "savings": fmt_percent(_float(cost.get("savingsPercent"))),
        "lostWork": fmt_seconds(total_lost_work(attempts)),
        "gpuHours": f"{float(cost.get('gpuHours') or 0.0):.1f}",
        "last": "-",
    }
    last = last_interruption(attempts)
    if last is not None:
        out["last"] = last_label(last)
        when = last.get("endedAt") or last.get("stoppedAt")
        if when:
            out["lastAt"] = str(when)
    return out


# --- per-attempt step marks ---------------------------------------------------------------


def start_step(progress: Mapping[str, Any] | None) -> int:
    """The step a new attempt resumes from: the newest committed checkpoint (0: none)."""
    return int((progress or {}).get("checkpointStep") or 0)


def end_step(attempt: int, progress: Mapping[str, Any] | None) -> int | None:
    """The last step attempt ``attempt`` reported, or None when the newest progress was
    written by another attempt (this one never reported)."""
    prog = progress or {}
    if int(prog.get("attempt") or 0) != attempt or prog.get("step") is None:
        return None
    return int(prog["step"])


def steps_done(entry: Mapping[str, Any], progress: Mapping[str, Any] | None) -> int | None:
    """Steps attempt ``entry`` trained: endStep (or the live step) minus startStep."""
    if entry.get("startStep") is None:
        return None
    end = entry.get("endStep")
    if end is None and not entry.get("outcome"):
        end = end_step(int(entry["attempt"]), progress)
    if end is None:
        return None
    return max(0, int(end) - int(entry["startStep"]))
