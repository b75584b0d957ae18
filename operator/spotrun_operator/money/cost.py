"""Dollars and GPU-hours of a run (pure: no I/O, no clock, no boto3).

An attempt is priced from its node-seconds, each node at the hourly price of its instance
type (and zone, when known). Spot nodes count in ``spotUSD``, on-demand nodes (after
``onDemandFallbackAfter``) in ``onDemandUSD``; the same node-seconds all on-demand are
``onDemandEquivalentUSD``, against which ``savingsPercent`` is measured.

Prices come either from a table ``Mapping[str, Price]`` (``DEFAULT_PRICES``, or
``pricing.PriceSnapshot.price_table()``) or from anything with the zone-aware
:class:`Prices` methods (``pricing.PriceSnapshot`` itself).

A running attempt is re-priced at each reconcile; once it ends the operator freezes its
figures into ``status.attempts[]`` (``Cost.frozen_fields``) so later price changes never
rewrite history. Run total = archived + frozen attempts + the running one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final, Literal, Protocol

from spotrun_api.money import round_half_up
from spotrun_api.prices import DEFAULT_ON_DEMAND_USD_PER_HOUR, DEFAULT_SPOT_FRACTION
from spotrun_api.status import Archived, Attempt, CostStatus

# The on-demand table and the spot fraction live in spotrun_api.prices, shared with the
# kubectl plugin's estimate.
CapacityType = Literal["spot", "on-demand"]
SECONDS_PER_HOUR: Final = 3600.0


@dataclass(frozen=True)
class Price:
    """Hourly prices of one instance type."""

    spot_usd_per_hour: float
    on_demand_usd_per_hour: float


def price_table(
    on_demand: Mapping[str, float], spot_fraction: float = DEFAULT_SPOT_FRACTION
) -> dict[str, Price]:
    """Prices from on-demand list prices, spot estimated as ``spot_fraction`` of them."""
    return {t: Price(usd * spot_fraction, usd) for t, usd in on_demand.items()}


DEFAULT_PRICES: Final[Mapping[str, Price]] = MappingProxyType(
    price_table(DEFAULT_ON_DEMAND_USD_PER_HOUR)
)


class Prices(Protocol):
    """Zone-aware hourly prices; None when the instance type is unknown."""

    def spot_usd_per_hour(self, instance_type: str, zone: str | None = None) -> float | None: ...

    def on_demand_usd_per_hour(self, instance_type: str) -> float | None: ...


@dataclass(frozen=True)
class PriceTable:
    """A ``Mapping[str, Price]`` seen through :class:`Prices` (one price for every zone)."""

    table: Mapping[str, Price]

    def spot_usd_per_hour(self, instance_type: str, zone: str | None = None) -> float | None:
        p = self.table.get(instance_type)
        return None if p is None else p.spot_usd_per_hour

    def on_demand_usd_per_hour(self, instance_type: str) -> float | None:
        p = self.table.get(instance_type)
        return None if p is None else p.on_demand_usd_per_hour


def as_prices(prices: Mapping[str, Price] | Prices) -> Prices:
    return PriceTable(prices) if isinstance(prices, Mapping) else prices


def _finite(value: float | None) -> float:
    """A stored figure, or 0 when absent or not finite."""
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return 0.0
    return float(value)


@dataclass(frozen=True)
class Cost:
    """Money and GPU time of one attempt, of the archived attempts, or of a whole run."""

    spot_usd: float = 0.0
    on_demand_usd: float = 0.0
    on_demand_equivalent_usd: float = 0.0
    gpu_hours: float = 0.0
    unpriced_node_seconds: float = 0.0
    """Node-seconds of instance types with no known price (counted as $0)."""
    spares_usd: float = 0.0
    """Nodes held by warm spares (money.spares): paid, but no training."""
    spare_node_seconds: float = 0.0

    @property
    def total_usd(self) -> float:
        return self.spot_usd + self.on_demand_usd + self.spares_usd

    @property
    def savings_percent(self) -> float:
        """100 x (1 - paid / on-demand equivalent), one decimal; 0 when nothing is priced."""
        if self.on_demand_equivalent_usd <= 0.0:
            return 0.0
        return round_half_up(100.0 * (1.0 - self.total_usd / self.on_demand_equivalent_usd), 1)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.spot_usd + other.spot_usd,
            self.on_demand_usd + other.on_demand_usd,
            self.on_demand_equivalent_usd + other.on_demand_equivalent_usd,
            self.gpu_hours + other.gpu_hours,
            self.unpriced_node_seconds + other.unpriced_node_seconds,
            self.spares_usd + other.spares_usd,
            self.spare_node_seconds + other.spare_node_seconds,
        )

    @classmethod
    def of(cls, frozen: Attempt | Archived | None) -> Cost:
        """The spend frozen into a ``status.attempts[]`` entry or ``status.archived``
        (absent or non-finite figures count 0)."""
        if frozen is None:
            return cls()
        return cls(
            _finite(frozen.spot_usd),
            _finite(frozen.on_demand_usd),
            _finite(frozen.on_demand_equivalent_usd),
            _finite(frozen.gpu_hours),
        )

    def frozen_fields(self) -> dict[str, float]:
        """The fields (model attribute names) that freeze this spend into an Attempt or
        Archived. Kept to 1e-6 so sums over many attempts do not drift by cents."""
        return {
            "spot_usd": round(self.spot_usd, 6),
            "on_demand_usd": round(self.on_demand_usd, 6),
            "on_demand_equivalent_usd": round(self.on_demand_equivalent_usd, 6),
            "gpu_hours": round(self.gpu_hours, 6),
        }

    def status(self) -> CostStatus:
        """``status.cost`` as the CRD defines it: USD to the cent, percent to 0.1."""
        return CostStatus(
            spot_usd=round_half_up(self.spot_usd),
            on_demand_usd=round_half_up(self.on_demand_usd),
            total_usd=round_half_up(self.total_usd),
            on_demand_equivalent_usd=round_half_up(self.on_demand_equivalent_usd),
            savings_percent=self.savings_percent,
            gpu_hours=round_half_up(self.gpu_hours),
            # Only for a run that had spares: other runs' status.cost stays as it was.
            spares_usd=round_half_up(self.spares_usd) if self.spare_node_seconds else None,
            spare_node_seconds=round(self.spare_node_seconds) if self.spare_node_seconds else None,
        )


def attempt_cost(
    *,
    seconds: float,
    nodes: int,
    gpus_per_node: int,
    instance_type: str,
    capacity_type: str,
    prices: Mapping[str, Price] | Prices = DEFAULT_PRICES,
    zones: Iterable[str | None] = (),
) -> Cost:
    """Cost of ``nodes`` nodes running ``seconds`` each.

    ``zones`` gives each node's zone in order; nodes beyond it have an unknown zone (a
    zone-aware :class:`Prices` then charges its dearest zone, so budgets never under-count).
    ``capacity_type`` is ``spot`` or ``on-demand``.
    """
    if nodes < 0 or gpus_per_node < 0:
        raise ValueError("nodes and gpus_per_node must be >= 0")
    if capacity_type not in ("spot", "on-demand"):
        raise ValueError(f"capacity_type must be spot or on-demand, got {capacity_type!r}")
    node_zones = list(zones)
    if len(node_zones) > nodes:
        raise ValueError(f"{len(node_zones)} zones for {nodes} nodes")
    node_zones += [None] * (nodes - len(node_zones))
    seconds = max(0.0, seconds)
    p = as_prices(prices)
    on_demand_rate = p.on_demand_usd_per_hour(instance_type)
    spot = on_demand = equivalent = unpriced = 0.0
    for zone in node_zones:
        if capacity_type == "spot":
            rate = p.spot_usd_per_hour(instance_type, zone)
        else:
            rate = on_demand_rate
        if rate is None:
            unpriced += seconds
            continue
        if capacity_type == "spot":
            spot += seconds * rate / SECONDS_PER_HOUR
        else:
            on_demand += seconds * rate / SECONDS_PER_HOUR
        # No on-demand price known: claim no saving rather than invent one.
        ref = on_demand_rate if on_demand_rate is not None else rate
        equivalent += seconds * ref / SECONDS_PER_HOUR
    return Cost(
        spot_usd=spot,
        on_demand_usd=on_demand,
        on_demand_equivalent_usd=equivalent,
        gpu_hours=seconds * nodes * gpus_per_node / SECONDS_PER_HOUR,
        unpriced_node_seconds=unpriced,
    )


@dataclass(frozen=True)
class Segment:
    """A stretch of an attempt with one placement (several when nodes were replaced).

    ``zones``: each node's zone in order (may be shorter than ``nodes``).
    ``end`` None: still running, priced up to ``now``.
    """

    start: datetime
    end: datetime | None
    nodes: int
    gpus_per_node: int
    instance_type: str
    zones: tuple[str, ...] = ()
    capacity_type: CapacityType = "spot"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("segment times must be timezone-aware")

    def seconds(self, now: datetime) -> float:
        """Wall seconds run by ``now`` (0 when it had not started yet)."""
        end = self.end if self.end is not None else now
        return max(0.0, (end - self.start).total_seconds())


def segment_cost(segment: Segment, prices: Mapping[str, Price] | Prices, now: datetime) -> Cost:
    return attempt_cost(
        seconds=segment.seconds(now),
        nodes=segment.nodes,
        gpus_per_node=segment.gpus_per_node,
        instance_type=segment.instance_type,
        capacity_type=segment.capacity_type,
        prices=prices,
        zones=segment.zones,
    )


def burn_rate_usd_per_second(
    segments: Iterable[Segment], prices: Mapping[str, Price] | Prices
) -> float:
    """Spend rate of the still-running segments (USD/s): what budget.assess needs."""
    p = as_prices(prices)
    rate = 0.0
    for seg in segments:
        if seg.end is not None:
            continue
        zones: list[str | None] = [*seg.zones, *([None] * (seg.nodes - len(seg.zones)))]
        for zone in zones:
            if seg.capacity_type == "spot":
                hourly = p.spot_usd_per_hour(seg.instance_type, zone)
            else:
                hourly = p.on_demand_usd_per_hour(seg.instance_type)
            rate += (hourly or 0.0) / SECONDS_PER_HOUR
    return rate
