"""Spot and on-demand prices of GPU instances, cached.

Spot prices come from EC2 ``DescribeSpotPriceHistory`` through ``aws_prices`` (the only
module of the operator doing AWS I/O); on-demand prices from a table, because the Pricing
API is only served from two regions and needs a broader IAM grant than the operator's
one-action policy. When AWS cannot answer, spot prices are estimated from the table and
the snapshot says why, so the operator can set ``PricingAvailable=False`` with the error.

:class:`PriceBook` is synchronous and may block for tens of seconds (an endpoint that
accepts but never answers: 10 s read timeouts, retried): call it from a thread, never on the
event loop. What the operator uses is ``pricing_background.BackgroundPriceBook``: AWS is
asked on a thread of its own, and a reconcile waits for an answer only briefly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal

from spotrun_api.prices import dearest_zone
from spotrun_operator.money.aws_prices import (
    LINUX_PRODUCT,
    REASON_NO_DATA,
    REASON_OK,
    PricingConfig,
    PricingFailure,
    SpotPrice,
    classify_error,
    fetch_spot_price_history,
    make_ec2_client,
    newest_per_zone,
)
from spotrun_operator.money.cost import Price

log = logging.getLogger(__name__)

CONDITION_TYPE: Final = "PricingAvailable"

QuoteSource = Literal["aws", "aws-other-zone", "table-estimate", "unknown"]
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Quote:
    """One hourly price and where it came from."""

    usd_per_hour: float | None
    source: QuoteSource
    as_of: datetime | None = None


@dataclass(frozen=True)
class PricingCondition:
    """Condition ``PricingAvailable`` (type CONDITION_TYPE) for the run's status."""

    status: Literal["True", "False"]
    reason: str
    message: str


@dataclass(frozen=True)
class PriceSnapshot:
    """Prices for a set of instance types at one moment; satisfies cost.Prices."""

    taken_at: datetime
    region: str | None
    instance_types: tuple[str, ...]
    spot: Mapping[str, Mapping[str, SpotPrice]]
    """AWS prices per type and zone (possibly from an earlier fetch, see errors)."""
    fetched_at: Mapping[str, datetime]
    """When the spot entry of each type was fetched from AWS."""
    errors: Mapping[str, PricingFailure]
    """Types whose latest fetch failed (their spot entry, if any, is older data)."""
    on_demand_table: Mapping[str, float]
    spot_fraction: float

    def on_demand_usd_per_hour(self, instance_type: str) -> float | None:
        return self.on_demand_table.get(instance_type)

    def spot_quote(self, instance_type: str, zone: str | None = None) -> Quote:
        zones = self.spot.get(instance_type) or {}
        if zone is not None and zone in zones:
            rec = zones[zone]
            return Quote(rec.usd_per_hour, "aws", rec.timestamp)
        dearest = dearest_zone(zones)  # zone unknown or unpriced: never an under-count
        if dearest is not None:
            return Quote(dearest.usd_per_hour, "aws-other-zone", dearest.timestamp)
        od = self.on_demand_usd_per_hour(instance_type)
        if od is None:
            return Quote(None, "unknown")
        return Quote(od * self.spot_fraction, "table-estimate")

    def spot_usd_per_hour(self, instance_type: str, zone: str | None = None) -> float | None:
        return self.spot_quote(instance_type, zone).usd_per_hour

    def price_table(self) -> dict[str, Price]:
        """Zone-less ``cost.Price`` per known type (spot at the dearest zone), for code
        that prices attempts without zones (status.entry_cost, plan.Observed.prices)."""
        out: dict[str, Price] = {}
        for t in dict.fromkeys([*self.instance_types, *self.on_demand_table]):
            spot, od = self.spot_usd_per_hour(t), self.on_demand_usd_per_hour(t)
            if spot is not None:
                out[t] = Price(spot, od if od is not None else spot)
        return out

    def condition(self) -> PricingCondition:
        """PricingAvailable: True when every type has fresh AWS prices."""
        errors = [self.errors[t] for t in self.instance_types if t in self.errors]
        missing = [t for t in self.instance_types if t not in self.errors and not self.spot.get(t)]
        if not errors and not missing:
            parts = []
            for t in self.instance_types:
                usd = [r.usd_per_hour for r in self.spot[t].values()]
                lo, hi = min(usd), max(usd)
                span = f"${lo:.4f}" + (f"-${hi:.4f}" if hi > lo else "")
                parts.append(f"{t} {span}/h in {len(usd)} zone(s)")
            return PricingCondition(
                "True", REASON_OK, f"spot prices from AWS ({self.region}): " + "; ".join(parts)
            )
        notes = [e.message for e in dict.fromkeys(errors)]
        if missing:
            notes.append(
                f"EC2 has no {LINUX_PRODUCT} spot price for {', '.join(missing)} in "
                f"{self.region} (unknown instance type, or not offered there)"
            )
        reason = errors[0].reason if errors else REASON_NO_DATA
        return PricingCondition("False", reason, "; ".join(notes) + "; " + self._fallback_note())

    def _fallback_note(self) -> str:
        parts = []
        for t in self.instance_types:
            q = self.spot_quote(t)
            if q.source == "table-estimate":
                od = self.on_demand_table[t]
                parts.append(
                    f"{t} spot estimated {self.spot_fraction:.0%} x ${od:.2f}/h = "
                    f"${q.usd_per_hour:.2f}/h"
                )
            elif q.source == "unknown":
                parts.append(f"{t} has no price (add it to the on-demand table); counted as $0")
            elif t in self.fetched_at:
                parts.append(f"{t} uses AWS prices fetched {self.fetched_at[t]:%Y-%m-%dT%H:%MZ}")
        return "; ".join(parts)


@dataclass
class _TypeState:
    zones: dict[str, SpotPrice] | None = None  # None: never fetched successfully
    fetched_at: datetime | None = None
    attempted_at: datetime | None = None
    error: PricingFailure | None = None


class PriceBook:
    """Cached spot prices per instance type, refreshed every ``refresh_seconds``.

    ``clock`` returns an aware UTC datetime; tests inject one to drive refreshes.
    ``client_factory`` builds the EC2 client once (retried while it fails, e.g. no region).
    Thread-safe: one fetch at a time, callers share its result.
    """

    def __init__(
        self,
        config: PricingConfig | None = None,
        *,
        clock: Clock = utcnow,
        client_factory: Callable[[PricingConfig], Any] = make_ec2_client,
    ) -> None:
        self.config = config or PricingConfig()
        self._clock = clock
        self._client_factory = client_factory
        self._client: Any = None
        self._region: str | None = self.config.region
        self._table = self.config.on_demand_table()
        self._states: dict[str, _TypeState] = {}
        self._lock = threading.Lock()

    def snapshot(self, instance_types: Iterable[str]) -> PriceSnapshot:
        """Prices of these types, fetching from AWS the ones whose cache entry is due."""
        types = tuple(dict.fromkeys(instance_types))
        with self._lock:
            now = self.now()
            due = [t for t in types if self._due(t, now)]
            if due:
                self._fetch(due, now)
            return self._build(types, now)

    def now(self) -> datetime:
        """The book's clock, in UTC (what its snapshots are stamped with)."""
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("PriceBook clock must return an aware datetime")
        return now.astimezone(UTC)

    def _due(self, itype: str, now: datetime) -> bool:
        st = self._states.get(itype)
        if st is None:
            return True
        if st.error is not None and st.attempted_at is not None:
            wait, since = self.config.failure_retry_seconds, st.attempted_at
        elif st.fetched_at is not None:
            wait, since = self.config.refresh_seconds, st.fetched_at
        else:
            return True
        elapsed = (now - since).total_seconds()
        return elapsed < 0 or elapsed >= wait  # a clock stepped backwards refreshes too

    def _fetch(self, due: list[str], now: datetime) -> None:
        try:
            if self._client is None:
                self._client = self._client_factory(self.config)
                self._region = str(self._client.meta.region_name)
            records = fetch_spot_price_history(
                self._client,
                due,
                start=now - timedelta(seconds=self.config.lookback_seconds),
                page_size=self.config.page_size,
            )
        except Exception as exc:  # prices must never break a reconcile: fall back instead
            error = classify_error(exc, self._region)
            for t in due:
                st = self._states.setdefault(t, _TypeState())
                if st.error != error:
                    log.warning("spot prices for %s unavailable: %s", t, error.message)
                st.error, st.attempted_at = error, now
            return
        latest = newest_per_zone(records)
        for t in due:
            zones = latest.get(t, {})
            if not zones:
                log.warning("EC2 returned no spot price for %s in %s", t, self._region)
            self._states[t] = _TypeState(zones=zones, fetched_at=now, attempted_at=now)

    def _build(self, types: tuple[str, ...], now: datetime) -> PriceSnapshot:
        spot: dict[str, Mapping[str, SpotPrice]] = {}
        fetched: dict[str, datetime] = {}
        errors: dict[str, PricingFailure] = {}
        max_stale = timedelta(seconds=self.config.max_stale_seconds)
        for t in types:
            st = self._states.get(t, _TypeState())
            if st.error is not None:
                errors[t] = st.error
            fresh = st.fetched_at is not None and now - st.fetched_at <= max_stale
            if st.zones is not None and st.fetched_at is not None and fresh:
                spot[t] = MappingProxyType(dict(st.zones))
                fetched[t] = st.fetched_at
        return PriceSnapshot(
            taken_at=now,
            region=self._region,
            instance_types=types,
            spot=MappingProxyType(spot),
            fetched_at=MappingProxyType(fetched),
            errors=MappingProxyType(errors),
            on_demand_table=MappingProxyType(self._table),
            spot_fraction=self.config.spot_fraction,
        )
