"""``kubectl spotrun estimate`` output: the text table and the ``--json`` object (pure).

Money is formatted by ``spotrun_api.money`` (text) and rounded half up to the cent (JSON),
as everywhere else in spotrun.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from spotrun_api.display import fmt_seconds
from spotrun_api.enums import CapacityType
from spotrun_api.money import fmt_usd, round_half_up
from spotrun_cli.estimate_plan import Estimate, Row
from spotrun_cli.ledger import table

COLUMNS: Final = (
    "INSTANCE TYPE",
    "NODES",
    "SPOT/H",
    "SPOT PRICE FROM",
    "ON-DEMAND/H",
    "{cost}",
    "ON-DEMAND COST",
    "SAVING",
    "BUDGET",
)


def fmt_hours(hours: float | None) -> str:
    return "never finishes" if hours is None else f"{hours:.1f}h"


def _source(r: Row) -> str:
    if r.spot.source == "aws":
        return f"aws {r.spot.zone}"
    return r.spot.source


def _saving(r: Row) -> str:
    if r.saving_usd is None or r.saving_percent is None:
        return "-"
    usd = fmt_usd(r.saving_usd) if r.saving_usd >= 0 else "-" + fmt_usd(-r.saving_usd)
    return f"{usd} ({r.saving_percent:.0f}%)"


def _budget(e: Estimate, r: Row) -> str:
    budget = e.spec.max_usd
    if budget is None:
        return "-"
    if r.budget_reached_at_hour is not None:
        return f"reached at {fmt_hours(r.budget_reached_at_hour)}"
    return "not reached" if r.cost_usd is not None else "-"


def _cells(e: Estimate, r: Row) -> list[str]:
    return [
        r.instance_type,
        str(r.nodes),
        fmt_usd(r.spot.usd_per_hour),
        _source(r),
        fmt_usd(r.on_demand_usd_per_hour),
        fmt_usd(r.cost_usd),
        fmt_usd(r.on_demand_cost_usd),
        _saving(r),
        _budget(e, r),
    ]


def _interval_text(e: Estimate) -> str:
    raw = e.spec.checkpoint.interval
    every = fmt_seconds(e.schedule.interval_seconds)
    return f"{every} (auto: Young/Daly at this rate)" if raw == "auto" else raw


def _interruption_lines(e: Estimate, rate_note: str) -> list[str]:
    a, s = e.assumptions, e.schedule
    if s.capacity_type is CapacityType.ON_DEMAND:
        return ["  interruptions      none: capacity.type on-demand"]
    rate = f"{a.interruptions_per_node_hour:.3g} per node-hour ({rate_note})"
    lost = fmt_seconds(s.lost_seconds_per_interruption)
    if s.expected_interruptions is None:
        every = fmt_seconds(3600.0 / (a.interruptions_per_node_hour * e.spec.nodes))
        first = f"one every {every} at {rate}: sooner than the {lost} each costs"
    else:
        first = f"{s.expected_interruptions:.2f} expected at {rate}"
    return [
        f"  interruptions      {first}",
        f"  each costs         {lost}: {fmt_seconds(s.recovery_seconds)} to recover + "
        f"{fmt_seconds(s.interval_seconds / 2)} of work since the last checkpoint "
        "(half the interval)",
    ]


def header(e: Estimate, rate_note: str) -> list[str]:
    spec, s = e.spec, e.schedule
    name = e.name or "(unnamed)"
    who = f"{e.namespace}/{name}" if e.namespace else name
    budget = f", budget {fmt_usd(spec.max_usd)}" if spec.max_usd is not None else ""
    return [
        f"TrainingRun {who}: {spec.nodes} node(s) x {spec.gpus_per_node} GPUs on "
        f"{spec.capacity.type.value}, checkpoint every {_interval_text(e)}{budget}",
        f"  training time      {fmt_hours(e.assumptions.hours)} uninterrupted",
        *_interruption_lines(e, rate_note),
        f"  expected time      {fmt_hours(s.expected_hours)}",
    ]


def render(estimates: Sequence[Estimate], *, prices_note: str, rate_note: str) -> str:
    """Per run: its assumptions, then one row per instance type; the prices' source last."""
    parts: list[str] = []
    for e in estimates:
        on_demand = e.schedule.capacity_type is CapacityType.ON_DEMAND
        columns = [c.format(cost="COST" if on_demand else "SPOT COST") for c in COLUMNS]
        rows = [_cells(e, r) for r in e.rows]
        parts.append("\n".join(header(e, rate_note)) + "\n\n" + table(rows, columns))
    return "\n".join(parts) + f"\nPrices: {prices_note}\n"


def _usd(value: float | None, places: int = 2) -> float | None:
    return None if value is None else round_half_up(value, places)


def _row_json(r: Row) -> dict[str, Any]:
    return {
        "instanceType": r.instance_type,
        "nodes": r.nodes,
        "spotUSDPerHour": _usd(r.spot.usd_per_hour, 4),
        "spotPriceSource": r.spot.source,
        "spotPriceZone": r.spot.zone,
        "spotPriceZones": r.spot.zones,
        "onDemandUSDPerHour": _usd(r.on_demand_usd_per_hour, 4),
        "costUSD": _usd(r.cost_usd),
        "onDemandCostUSD": _usd(r.on_demand_cost_usd),
        "savingUSD": _usd(r.saving_usd),
        "savingPercent": r.saving_percent,
        "budgetReached": r.budget_reached_at_hour is not None,
        "budgetReachedAtHour": _usd(r.budget_reached_at_hour),
    }


def to_json(
    estimates: Sequence[Estimate], *, region: str, prices_note: str, pricing_source: str
) -> dict[str, Any]:
    """The ``--json`` object: the same figures as the text, unrounded but to the cent."""
    runs = []
    for e in estimates:
        a, s, spec = e.assumptions, e.schedule, e.spec
        runs.append({
            "name": e.name,
            "namespace": e.namespace,
            "nodes": spec.nodes,
            "gpusPerNode": spec.gpus_per_node,
            "capacityType": spec.capacity.type.value,
            "checkpointInterval": spec.checkpoint.interval,
            "checkpointIntervalSeconds": s.interval_seconds,
            "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
            "budgetUSD": spec.max_usd,
            "hours": a.hours,
            "interruptionsPerNodeHour": a.interruptions_per_node_hour,
            "recoverySeconds": s.recovery_seconds,
            "expectedInterruptions": _usd(s.expected_interruptions, 4),
            "lostSecondsPerInterruption": s.lost_seconds_per_interruption,
            "expectedHours": _usd(s.expected_hours, 4),
            "finishes": s.expected_hours is not None,
            "rows": [_row_json(r) for r in e.rows],
        })  # fmt: skip
    return {
        "region": region,
        "pricing": {"source": pricing_source, "note": prices_note},
        "runs": runs,
    }
