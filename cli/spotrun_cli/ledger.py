"""``kubectl spotrun describe RUN``: the run's story as text (pure).

The attempt ledger is ``status.attempts`` (written by the operator; parsed once into
``spotrun_api``'s typed status): one row per attempt with its nodes, zone, start, end,
outcome, signal, the steps it trained, the work it lost and what it cost. Figures are
formatted by ``spotrun_api.display``, the same functions behind ``kubectl get tr``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from spotrun_api.display import fmt_percent, fmt_seconds, steps_done
from spotrun_api.money import fmt_usd
from spotrun_api.status import Attempt, TrainingRunStatus

COLUMNS: Final = (
    "ATTEMPT",
    "NODES",
    "ZONE",
    "START",
    "END",
    "OUTCOME",
    "SIGNAL",
    "STEPS",
    "LOST",
    "COST",
)


def fmt_when(value: Any) -> str:
    """``11-22 12:04:05`` (UTC) from an RFC 3339 timestamp; ``-`` when unset."""
    if not value:
        return "-"
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return t.astimezone(dt.UTC).strftime("%m-%d %H:%M:%S")


def _zone(entry: Attempt) -> str:
    zones = sorted(set(entry.zones or []))
    if entry.zone and not zones:
        zones = [entry.zone]
    return ",".join(zones) or "-"


def _cost(entry: Attempt) -> str:
    if entry.spot_usd is None and entry.on_demand_usd is None:
        return "-"
    return fmt_usd((entry.spot_usd or 0.0) + (entry.on_demand_usd or 0.0))


def row(entry: Attempt, status: TrainingRunStatus) -> list[str]:
    live = entry.outcome is None
    steps = steps_done(entry, status.progress)
    start = entry.start_step or 0
    step_text = "-" if steps is None else f"{steps} ({start}->{start + steps})"
    outcome = entry.outcome or (status.phase if live else None)
    lost = entry.lost_work_seconds
    return [
        str(entry.attempt),
        str(entry.nodes or "-"),
        _zone(entry),
        fmt_when(entry.started_at or entry.created_at),
        fmt_when(entry.ended_at) if not live else "-",
        str(outcome.value) if outcome else "-",
        entry.reason or "-",
        step_text,
        fmt_seconds(lost) if lost is not None else "-",
        _cost(entry),
    ]


def table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    """Columns padded to their widest cell, three spaces apart (kubectl's style)."""
    all_rows = [list(columns), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(columns))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows
    ]
    return "\n".join(lines) + "\n"


def describe(run: Mapping[str, Any]) -> str:
    """Header (phase, counters, progress, cost) then the attempt ledger."""
    meta = run.get("metadata") or {}
    spec = run.get("spec") or {}
    st = TrainingRunStatus.model_validate(run.get("status") or {})
    prog, cost = st.progress, st.cost
    archived = (st.archived.attempts if st.archived else None) or 0
    cap = spec.get("capacity") or {}
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        f"Phase:        {st.phase.value if st.phase else '-'}",
        f"Message:      {st.message or '-'}",
        f"Nodes:        {spec.get('nodes', 1)} x {spec.get('gpusPerNode', 8)} GPUs, "
        f"{cap.get('type', 'spot')} {','.join(cap.get('instanceTypes') or [])}".rstrip(),
        f"Attempt:      {st.attempt or 0} (preemptions {st.preemptions or 0}, "
        f"failures {st.failures or 0}"
        + (f", queue preemptions {st.queue_preemptions}" if st.queue_preemptions else "")
        + ")",
        f"Progress:     step {prog.step if prog else '-'}, checkpoint "
        f"{_or_dash(prog.checkpoint_step if prog else None)}",
        f"Cost:         {fmt_usd(cost.total_usd if cost else None)} "
        f"(saving {fmt_percent(cost.savings_percent if cost else None)} against on-demand)",
        "",
    ]
    if archived:
        lines.append(f"{archived} older attempt(s) archived (their cost is in the totals).")
    attempts = sorted(st.attempts or [], key=lambda e: e.attempt)
    if not attempts:
        return "\n".join([*lines, "No attempts yet."]) + "\n"
    return "\n".join(lines) + "\n" + table([row(e, st) for e in attempts])


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
