"""Pure reducers over ``TrainingRun.status``: the attempt history, conditions, backoff,
lost work, checkpoint interval and cost.

``status.attempts`` is keyed by attempt number. The operator writes an attempt's outcome
there (and bumps the counters in the same write) before it acts on it, and only when the
entry has no outcome yet: that single compare-and-swap write is what makes counting
exactly-once across operator crashes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from spotrun_operator.common import fmt_time, parse_duration, parse_time
from spotrun_operator.config import OperatorConfig
from spotrun_operator.cost import Cost, Price, Prices, attempt_cost

PriceSource = Mapping[str, Price] | Prices

Entry = dict[str, Any]

# Outcomes that end the run; the others lead to a next attempt.
PREEMPTED: Final = "Preempted"
FAILED: Final = "Failed"
SUCCEEDED: Final = "Succeeded"
CONFIG_ERROR: Final = "ConfigurationError"
CAPACITY_FALLBACK: Final = "CapacityFallback"
SUSPENDED: Final = "Suspended"
BUDGET_EXCEEDED: Final = "BudgetExceeded"
# Losses that grow the backoff (a fallback or a suspend is a decision, not a loss).
LOSSES: Final = frozenset({PREEMPTED, FAILED})


def attempts_of(status: Mapping[str, Any]) -> list[Entry]:
    return sorted((dict(e) for e in status.get("attempts") or []), key=lambda e: int(e["attempt"]))


def get_attempt(history: Sequence[Entry], n: int) -> Entry | None:
    return next((dict(e) for e in history if int(e["attempt"]) == n), None)


def upsert_attempt(history: Sequence[Entry], entry: Entry) -> list[Entry]:
    """History with ``entry`` replacing the one of the same number (None values dropped)."""
    clean = {k: v for k, v in entry.items() if v is not None}
    rest = [dict(e) for e in history if int(e["attempt"]) != int(entry["attempt"])]
    return sorted([*rest, clean], key=lambda e: int(e["attempt"]))


def trim_history(
    history: Sequence[Entry], archived: Mapping[str, Any], limit: int
) -> tuple[list[Entry], dict[str, Any]]:
    """Keep the newest ``limit`` attempts; fold the cost of the dropped ones into
    ``archived`` so totals survive. Only finished attempts (stoppedAt) are dropped."""
    keep = list(history)
    arch = dict(archived)
    while len(keep) > max(1, limit) and keep[0].get("stoppedAt"):
        old = keep.pop(0)
        total = Cost.from_fields(arch) + Cost.from_fields(old)
        arch = {**total.to_attempt_fields(), "attempts": int(arch.get("attempts") or 0) + 1}
    return keep, arch


# --- conditions ----------------------------------------------------------------------


def get_condition(conditions: Sequence[Mapping[str, Any]], ctype: str) -> dict[str, Any] | None:
    return next((dict(c) for c in conditions if c.get("type") == ctype), None)


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    ctype: str,
    status: bool | str,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """Conditions with ``ctype`` set in place (a condition left as it was keeps the list
    as it was: no write); lastTransitionTime moves only when status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = get_condition(conditions, ctype)
    changed = old is None or old.get("status") != value
    new = {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": fmt_time(now) if changed else old["lastTransitionTime"],  # type: ignore[index]
        "observedGeneration": generation,
    }
    out = [new if c.get("type") == ctype else dict(c) for c in conditions]
    if old is None:
        out.append(new)
    return out


# --- backoff ---------------------------------------------------------------------------


def _seconds(start: str | None, end: str | None) -> float:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return 0.0
    return max(0.0, (b - a).total_seconds())


def consecutive_losses(history: Sequence[Entry], reset_seconds: float) -> int:
    """Trailing attempts lost (preempted or failed) without a long healthy run between."""
    k = 0
    for e in reversed(history):
        if e.get("outcome") not in LOSSES:
            if e.get("outcome"):
                break
            continue  # the live attempt
        k += 1
        if _seconds(e.get("startedAt"), e.get("endedAt")) >= reset_seconds:
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


def lost_work_seconds(
    entry: Mapping[str, Any], progress: Mapping[str, Any] | None, at: str
) -> float:
    """Training time of ``entry`` not covered by a committed checkpoint at time ``at``.

    Work counts from when the gang ran (startedAt); a checkpoint older than that covers
    none of this attempt's work."""
    started = entry.get("startedAt")
    if not started:
        return 0.0
    ckpt = parse_time((progress or {}).get("checkpointTime"))
    start = parse_time(started)
    assert start is not None
    since = max(start, ckpt) if ckpt else start
    end = parse_time(at)
    assert end is not None
    return max(0.0, (end - since).total_seconds())


def final_lost_work(entry: Mapping[str, Any], progress: Mapping[str, Any] | None) -> float:
    """Lost work once the gang is gone: zero when this attempt committed a checkpoint at or
    after the interruption (it saved inside the notice), else the figure at the signal."""
    provisional = float(entry.get("lostWorkSeconds") or 0.0)
    prog = progress or {}
    ckpt, ended = parse_time(prog.get("checkpointTime")), parse_time(entry.get("endedAt"))
    if ckpt and ended and ckpt >= ended and int(prog.get("attempt") or 0) == int(entry["attempt"]):
        return 0.0
    return provisional


def checkpoint_interval_seconds(
    interval: str, history: Sequence[Entry], checkpoint_cost_seconds: float, default: float = 900.0
) -> int:
    """The interval given to the trainer. ``auto`` uses Young/Daly, sqrt(2 * C * MTBF),
    with MTBF estimated from the run's own preemptions, clamped to [1 min, 1 h]."""
    if interval != "auto":
        return max(1, round(parse_duration(interval)))
    ran = sum(_seconds(e.get("startedAt"), e.get("endedAt")) for e in history)
    preempted = sum(1 for e in history if e.get("outcome") == PREEMPTED)
    if preempted == 0 or ran <= 0:
        return int(default)
    mtbf = ran / preempted
    return int(min(3600.0, max(60.0, math.sqrt(2.0 * checkpoint_cost_seconds * mtbf))))


def entry_cost(entry: Mapping[str, Any], now: dt.datetime, prices: PriceSource) -> Cost:
    """Frozen cost of a finished attempt, or the running figure of a live one.

    An attempt costs from the moment its whole gang ran (startedAt) to the moment its
    last pod was gone (stoppedAt; endedAt or now until then)."""
    if "spotUSD" in entry:
        return Cost.from_fields(entry)
    if not entry.get("startedAt"):
        return Cost()
    nodes = int(entry.get("nodes") or 1)
    end = entry.get("stoppedAt") or entry.get("endedAt") or fmt_time(now)
    return attempt_cost(
        seconds=_seconds(entry.get("startedAt"), end),
        nodes=nodes,
        gpus_per_node=int(entry.get("gpus") or 0),
        instance_type=str(entry.get("instanceType") or ""),
        capacity_type="on-demand" if entry.get("capacityType") == "on-demand" else "spot",
        prices=prices,
        zones=[str(z) for z in entry.get("zones") or ()][:nodes],
    )


def total_cost(
    history: Sequence[Entry], archived: Mapping[str, Any], now: dt.datetime, prices: PriceSource
) -> Cost:
    total = Cost.from_fields(archived)
    for e in history:
        total = total + entry_cost(e, now, prices)
    return total


def recent_interrupted_nodes(
    history: Sequence[Entry], now: dt.datetime, window: float
) -> list[str]:
    """Nodes behind recent preemptions: the next attempt's affinity avoids them."""
    out: list[str] = []
    for e in history:
        ended = parse_time(e.get("endedAt"))
        recent = ended is not None and (now - ended).total_seconds() <= window
        if e.get("outcome") == PREEMPTED and e.get("node") and recent:
            out.extend([str(e["node"]), *(str(n) for n in e.get("interruptedNodes") or [])])
    return sorted(set(out))
