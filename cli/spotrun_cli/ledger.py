"""``kubectl spotrun describe RUN``: the run's story as text (pure).

The attempt ledger is ``status.attempts`` (written by the operator, see
operator/spotrun_operator/status.py): one row per attempt with its nodes, zone, start,
end, outcome, signal, the steps it trained, the work it lost and what it cost. Figures
are formatted by ``spotrun_operator.printer``, the same functions behind ``kubectl get tr``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from spotrun_operator.printer import fmt_percent, fmt_seconds, fmt_usd, steps_done

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


def _zone(entry: Mapping[str, Any]) -> str:
    zones = sorted({str(z) for z in entry.get("zones") or []})
    if entry.get("zone") and not zones:
        zones = [str(entry["zone"])]
    return ",".join(zones) or "-"


def _cost(entry: Mapping[str, Any]) -> str:
    if "spotUSD" not in entry and "onDemandUSD" not in entry:
        return "-"
    return fmt_usd(float(entry.get("spotUSD") or 0.0) + float(entry.get("onDemandUSD") or 0.0))


def row(entry: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    live = not entry.get("outcome")
    n = int(entry["attempt"])
    steps = steps_done(entry, status.get("progress"))
    start = entry.get("startStep")
    step_text = "-" if steps is None else f"{steps} ({start}->{int(start or 0) + steps})"
    outcome = str(entry.get("outcome") or (status.get("phase") if live else "") or "-")
    lost = entry.get("lostWorkSeconds")
    return [
        str(n),
        str(entry.get("nodes") or "-"),
        _zone(entry),
        fmt_when(entry.get("startedAt") or entry.get("createdAt")),
        fmt_when(entry.get("endedAt")) if not live else "-",
        outcome,
        str(entry.get("reason") or "-"),
        step_text,
        fmt_seconds(float(lost)) if lost is not None else "-",
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
    st = run.get("status") or {}
    prog = st.get("progress") or {}
    cost = st.get("cost") or {}
    archived = int((st.get("archived") or {}).get("attempts") or 0)
    cap = spec.get("capacity") or {}
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        f"Phase:        {st.get('phase') or '-'}",
        f"Message:      {st.get('message') or '-'}",
        f"Nodes:        {spec.get('nodes', 1)} x {spec.get('gpusPerNode', 8)} GPUs, "
        f"{cap.get('type', 'spot')} {','.join(cap.get('instanceTypes') or [])}".rstrip(),
        f"Attempt:      {st.get('attempt', 0)} (preemptions {st.get('preemptions', 0)}, "
        f"failures {st.get('failures', 0)})",
        f"Progress:     step {prog.get('step', '-')}, checkpoint {prog.get('checkpointStep', '-')}",
        f"Cost:         {fmt_usd(cost.get('totalUSD'))} "
        f"(saving {fmt_percent(cost.get('savingsPercent'))} against on-demand)",
        "",
    ]
    if archived:
        lines.append(f"{archived} older attempt(s) archived (their cost is in the totals).")
    attempts = sorted(st.get("attempts") or [], key=lambda e: int(e["attempt"]))
    if not attempts:
        return "\n".join([*lines, "No attempts yet."]) + "\n"
    return "\n".join(lines) + "\n" + table([row(e, st) for e in attempts])
