"""``kubectl spotrun estimate``: what a TrainingRun will cost, before it runs (pure).

The model, per instance type the spec allows (each as if the whole run used it):

* Interruptions strike each node at ``R`` per node-hour, so the gang at ``R x nodes`` per
  wall-clock hour; rework and recovery are exposed too. Each costs ``L`` = the recovery
  time (measured on real nodes, with the spec's grace period) + half a checkpoint interval
  (the work since the last periodic checkpoint, on average: a node lost without notice
  loses it all, one that saves on SIGTERM loses none, so half an interval errs on the
  safe side). The expected wall-clock time is
  the ``T`` with ``T = H + R x nodes x T x L``: ``T = H / (1 - R x nodes x L)``; a run
  whose gang is interrupted faster than it makes progress (``R x nodes x L >= 1``) never
  finishes.
* ``checkpoint.interval: auto`` is the operator's Young/Daly interval for the gang's MTBF
  ``1 / (R x nodes)`` and its default checkpoint cost: what the operator picks once its
  pools have seen interruptions at that rate (before any, and on on-demand, 15m).
* Spot cost: ``T x nodes x`` the spot price; on-demand cost of the same work:
  ``H x nodes x`` the on-demand price (on-demand nodes are not interrupted). A run on
  on-demand capacity (``capacity.type: on-demand``) is priced at on-demand for ``H``.
* ``spec.budget.maxUSD`` is reached at the hour the spend crosses it (the operator suspends
  the run then, or up to one checkpoint interval earlier so as not to overshoot).

Spot prices come from ``spotrun_api.prices`` (the operator's own source): the dearest zone
AWS priced, since a node's zone is not known before it runs; else the table estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from spotrun_api.checkpoint_interval import (
    DEFAULT_CHECKPOINT_COST_SECONDS,
    young_daly,
)
from spotrun_api.contract import DEFAULT_CHECKPOINT_INTERVAL_SECONDS
from spotrun_api.durations import parse_duration
from spotrun_api.enums import CapacityType
from spotrun_api.money import round_half_up
from spotrun_api.prices import SpotPrice, dearest_zone
from spotrun_api.spec import TrainingRunSpec

HOURS_PER_MONTH: Final = 730.0  # AWS's billing month
# AWS Spot Instance Advisor publishes a "frequency of interruption" per instance type and
# region in bands of instances interrupted over the trailing month: <5%, 5-10%, 10-15%,
# 15-20%, >20%. A band's share f of nodes seeing at least one interruption in a month is a
# rate of -ln(1 - f) / 730 per node-hour. The default is the edge of the highest band, 20%:
# 0.000306 per node-hour (GPU types are often in that band; the real rate may be higher).
ADVISOR_BANDS: Final = (0.05, 0.10, 0.15, 0.20)
DEFAULT_MONTHLY_INTERRUPTION_SHARE: Final = 0.20


def rate_of_monthly_share(share: float) -> float:
    """Interruptions per node-hour at which ``share`` of nodes is hit within a month."""
    return -math.log(1.0 - share) / HOURS_PER_MONTH


DEFAULT_INTERRUPTIONS_PER_NODE_HOUR: Final = rate_of_monthly_share(
    DEFAULT_MONTHLY_INTERRUPTION_SHARE
)
# Signal -> training again on the project's real nodes (`make demo`, README "What make demo
# shows"): 18 s (Node Termination Handler drain), 23 s (graceful node shutdown), 144 s (an
# instance that vanished). The slowest is taken, since a loss without notice is also what
# costs the half interval of work; 60 s of it were the stuck survivor's grace period (the
# demo's terminationGracePeriodSeconds), so a run's recovery is the rest plus its own grace.
# A spare node was ready there: on a cluster that must first launch one, add its boot time.
MEASURED_RECOVERY_SECONDS: Final = 144.0
MEASURED_GRACE_SECONDS: Final = 60.0

SpotSource = Literal["aws", "table-estimate", "unknown"]


@dataclass(frozen=True)
class SpotQuote:
    """The spot price an estimate charges for one instance type, and where it came from."""

    usd_per_hour: float | None
    source: SpotSource
    zone: str | None = None
    """The zone priced (the dearest AWS priced), for an ``aws`` quote."""
    zones: int = 0
    """How many zones AWS priced."""


def quote(
    zones: Mapping[str, SpotPrice], on_demand_usd_per_hour: float | None, spot_fraction: float
) -> SpotQuote:
    """The dearest zone AWS priced; else the table estimate; else unknown."""
    rec = dearest_zone(zones)
    if rec is not None:
        return SpotQuote(rec.usd_per_hour, "aws", rec.zone, len(zones))
    if on_demand_usd_per_hour is None:
        return SpotQuote(None, "unknown")
    return SpotQuote(on_demand_usd_per_hour * spot_fraction, "table-estimate")


@dataclass(frozen=True)
class Assumptions:
    hours: float
    """Uninterrupted wall-clock training time (H)."""
    interruptions_per_node_hour: float = DEFAULT_INTERRUPTIONS_PER_NODE_HOUR
    recovery_seconds: float | None = None
    """None: measured recovery with the spec's grace period (:func:`recovery_seconds`)."""
    checkpoint_cost_seconds: float = DEFAULT_CHECKPOINT_COST_SECONDS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hours) and self.hours > 0):
            raise ValueError(f"--hours must be a number > 0, got {self.hours:g}")
        rate = self.interruptions_per_node_hour
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"--interruptions-per-node-hour must be >= 0, got {rate:g}")
        rec = self.recovery_seconds
        if rec is not None and not (math.isfinite(rec) and rec >= 0):
            raise ValueError(f"--recovery-seconds must be >= 0, got {rec:g}")


@dataclass(frozen=True)
class Schedule:
    """What interruptions do to a run's time (the same for every instance type)."""

    capacity_type: CapacityType
    recovery_seconds: float
    interval_seconds: float
    """Checkpoint interval in seconds (``auto``: Young/Daly)."""
    lost_seconds_per_interruption: float
    expected_interruptions: float | None
    """None: the run never finishes."""
    expected_hours: float | None
    """Expected wall-clock hours; None: the run never finishes."""


def checkpoint_interval_seconds(spec: TrainingRunSpec, a: Assumptions) -> float:
    """The spec's interval; ``auto`` as the operator picks it for this interruption rate."""
    raw = spec.checkpoint.interval
    if raw != "auto":
        return parse_duration(raw)
    gang_rate = a.interruptions_per_node_hour * spec.nodes
    if gang_rate <= 0 or spec.capacity.type is CapacityType.ON_DEMAND:
        return float(DEFAULT_CHECKPOINT_INTERVAL_SECONDS)  # the operator's, with no MTBF
    return float(young_daly(a.checkpoint_cost_seconds, 3600.0 / gang_rate))


def recovery_seconds(spec: TrainingRunSpec, a: Assumptions) -> float:
    """Signal -> training again: as given, else the measured figure with this run's grace."""
    if a.recovery_seconds is not None:
        return a.recovery_seconds
    grace = float(spec.termination_grace_period_seconds)
    return MEASURED_RECOVERY_SECONDS - MEASURED_GRACE_SECONDS + grace


def schedule(spec: TrainingRunSpec, a: Assumptions) -> Schedule:
    cap = spec.capacity.type
    recovery = recovery_seconds(spec, a)
    interval = checkpoint_interval_seconds(spec, a)
    lost = recovery + interval / 2.0
    if cap is CapacityType.ON_DEMAND:
        return Schedule(cap, recovery, interval, lost, 0.0, a.hours)
    gang_per_hour = a.interruptions_per_node_hour * spec.nodes
    drag = gang_per_hour * lost / 3600.0  # wall-clock hours lost per wall-clock hour
    if drag >= 1.0:
        return Schedule(cap, recovery, interval, lost, None, None)
    hours = a.hours / (1.0 - drag)
    return Schedule(cap, recovery, interval, lost, gang_per_hour * hours, hours)


@dataclass(frozen=True)
class Row:
    """One instance type: prices, costs, saving and budget."""

    instance_type: str
    nodes: int
    spot: SpotQuote
    on_demand_usd_per_hour: float | None
    cost_usd: float | None
    """The run as specified (spot, or on-demand capacity), for the expected hours."""
    on_demand_cost_usd: float | None
    """The same work on on-demand nodes: H hours, no interruptions."""
    budget_reached_at_hour: float | None
    """Wall-clock hour the spend crosses spec.budget.maxUSD; None: not reached or no budget."""

    @property
    def saving_usd(self) -> float | None:
        if self.cost_usd is None or self.on_demand_cost_usd is None:
            return None
        return self.on_demand_cost_usd - self.cost_usd

    @property
    def saving_percent(self) -> float | None:
        saving, od = self.saving_usd, self.on_demand_cost_usd
        if saving is None or not od:
            return None
        return round_half_up(100.0 * saving / od, 1)


def row(
    spec: TrainingRunSpec,
    a: Assumptions,
    sched: Schedule,
    instance_type: str,
    spot: SpotQuote,
    on_demand_usd_per_hour: float | None,
) -> Row:
    nodes = spec.nodes
    on_demand = spec.capacity.type is CapacityType.ON_DEMAND
    hourly = on_demand_usd_per_hour if on_demand else spot.usd_per_hour
    cost = None
    if hourly is not None and sched.expected_hours is not None:
        cost = sched.expected_hours * nodes * hourly
    od_cost = None if on_demand_usd_per_hour is None else a.hours * nodes * on_demand_usd_per_hour
    reached = None
    budget = spec.max_usd
    if budget is not None and hourly:
        at = budget / (nodes * hourly)
        end = sched.expected_hours
        reached = at if end is None or at < end else None
    return Row(instance_type, nodes, spot, on_demand_usd_per_hour, cost, od_cost, reached)


@dataclass(frozen=True)
class Estimate:
    name: str
    namespace: str | None
    spec: TrainingRunSpec
    assumptions: Assumptions
    schedule: Schedule
    rows: tuple[Row, ...]


def estimate(
    spec: TrainingRunSpec,
    a: Assumptions,
    quotes: Mapping[str, SpotQuote],
    on_demand: Mapping[str, float],
    *,
    name: str = "",
    namespace: str | None = None,
) -> Estimate:
    """The estimate of one run: a row per instance type of ``spec.capacity.instanceTypes``
    (``quotes`` and ``on_demand`` priced by instance type; a type missing from both is
    unpriced)."""
    sched = schedule(spec, a)
    types: Sequence[str] = list(dict.fromkeys(spec.capacity.instance_types))
    rows = tuple(
        row(spec, a, sched, t, quotes.get(t, SpotQuote(None, "unknown")), on_demand.get(t))
        for t in types
    )
    return Estimate(name, namespace, spec, a, sched, rows)
