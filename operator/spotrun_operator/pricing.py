"""Spot and on-demand prices of GPU instances: the only module of the operator doing AWS I/O.

Spot prices come from EC2 ``DescribeSpotPriceHistory`` (boto3, default credential chain,
which is the pod's IRSA role on EKS); on-demand prices from a table, because the Pricing
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
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from spotrun_operator.cost import DEFAULT_ON_DEMAND_USD_PER_HOUR, DEFAULT_SPOT_FRACTION, Price

log = logging.getLogger(__name__)

LINUX_PRODUCT: Final = "Linux/UNIX"
CONDITION_TYPE: Final = "PricingAvailable"

# Condition reasons (CamelCase, Kubernetes API conventions).
REASON_OK: Final = "SpotPriceHistory"
REASON_THROTTLED: Final = "Throttled"
REASON_NO_REGION: Final = "NoRegion"
REASON_NO_CREDENTIALS: Final = "NoCredentials"
REASON_ACCESS_DENIED: Final = "AccessDenied"
REASON_UNREACHABLE: Final = "EndpointUnreachable"
REASON_AWS_ERROR: Final = "AWSError"
REASON_NO_DATA: Final = "NoSpotPriceData"

# Error codes botocore (standard/adaptive mode) retries as throttling, and those of a
# missing grant or bad credentials, which no retry fixes.
THROTTLING_CODES: Final = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
    "TooManyRequestsException", "EC2ThrottledException",
})  # fmt: skip
ACCESS_CODES: Final = frozenset({
    "UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure",
    "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch",
})  # fmt: skip

QuoteSource = Literal["aws", "aws-other-zone", "table-estimate", "unknown"]
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PricingConfig:
    """How prices are fetched and cached; the operator's config.py builds one."""

    region: str | None = None
    """AWS region; None: AWS_DEFAULT_REGION, AWS_REGION (IRSA pods have both), AWS config."""
    endpoint_url: str | None = None
    """EC2 endpoint override (tests, VPC endpoints); boto3 also reads AWS_ENDPOINT_URL_EC2."""
    on_demand_overrides: Mapping[str, float] = field(default_factory=dict)
    """USD/hour per instance type, merged over DEFAULT_ON_DEMAND_USD_PER_HOUR."""
    spot_fraction: float = DEFAULT_SPOT_FRACTION
    """Spot estimate = this x on-demand, used when AWS has no answer."""
    refresh_seconds: float = 600.0
    """Reuse fetched spot prices this long (AWS updates them a few times a day at most)."""
    failure_retry_seconds: float = 60.0
    """After a failed fetch, wait this long before asking AWS again (do not feed a throttle)."""
    max_stale_seconds: float = 6 * 3600.0
    """Keep using the last good AWS prices this long while fetches fail, then the table."""
    lookback_seconds: float = 3600.0
    """StartTime window; AWS also returns the price in effect at StartTime, so it can be short."""
    page_size: int = 1000
    """MaxResults per DescribeSpotPriceHistory page (AWS allows at most 1000)."""
    retry_mode: Literal["standard", "adaptive"] = "standard"
    """botocore retry mode; adaptive adds a client-side rate limiter that may block callers."""
    max_attempts: int = 4
    """Total attempts per request (first try + retries), for throttling and network errors."""
    connect_timeout_seconds: float = 3.0
    read_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 < self.spot_fraction <= 1.0:
            raise ValueError(f"spot_fraction must be in (0, 1], got {self.spot_fraction}")
        for name in ("refresh_seconds", "failure_retry_seconds", "max_stale_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.page_size <= 1000:
            raise ValueError(f"page_size must be in [1, 1000], got {self.page_size}")
        if self.refresh_seconds > self.max_stale_seconds:
            raise ValueError("refresh_seconds must not exceed max_stale_seconds")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for itype, usd in self.on_demand_overrides.items():
            if not (math.isfinite(usd) and usd > 0):
                raise ValueError(f"on-demand price of {itype} must be > 0, got {usd}")

    def on_demand_table(self) -> dict[str, float]:
        return {**DEFAULT_ON_DEMAND_USD_PER_HOUR, **self.on_demand_overrides}


@dataclass(frozen=True)
class SpotPrice:
    instance_type: str
    zone: str
    usd_per_hour: float
    timestamp: datetime


@dataclass(frozen=True)
class PricingFailure:
    """Why AWS gave no prices: ``reason`` is the condition reason, ``message`` for humans."""

    reason: str
    message: str


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


def classify_error(exc: Exception, region: str | None) -> PricingFailure:
    """Map a boto3/botocore exception to a condition reason and a message naming the cause."""
    where = f"DescribeSpotPriceHistory in {region or '(no region)'}"
    if isinstance(exc, NoRegionError):
        hint = "no AWS region configured (set the operator's region or AWS_REGION)"
        return PricingFailure(REASON_NO_REGION, hint)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        hint = "no AWS credentials (is the IRSA role annotation on the service account?)"
        return PricingFailure(REASON_NO_CREDENTIALS, f"{where}: {hint}")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        msg = str(err.get("Message", "")).strip()
        retries = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        detail = f"{where}: {code}" + (f" ({msg})" if msg else "")
        if code in THROTTLING_CODES:
            return PricingFailure(REASON_THROTTLED, f"{detail} after {retries} retries")
        if code in ACCESS_CODES:
            need = "the operator role needs ec2:DescribeSpotPriceHistory"
            return PricingFailure(REASON_ACCESS_DENIED, f"{detail}; {need}")
        return PricingFailure(REASON_AWS_ERROR, detail)
    if isinstance(exc, BotoConnectionError | ReadTimeoutError):  # refused, DNS, timeouts
        return PricingFailure(REASON_UNREACHABLE, f"{where}: {exc}")
    return PricingFailure(REASON_AWS_ERROR, f"{where}: {type(exc).__name__}: {exc}")


def make_ec2_client(config: PricingConfig) -> Any:
    """An EC2 client with bounded timeouts and botocore's standard/adaptive retries.

    A fresh Session per client: boto3's default session is not safe to share across the
    threads kopf runs handlers in. Raises NoRegionError when no region can be resolved.
    """
    # botocore reads only AWS_DEFAULT_REGION; the EKS pod identity webhook sets AWS_REGION too,
    # and other runtimes set only AWS_REGION.
    env = os.environ
    region = config.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None
    botocore_config = Config(
        region_name=region,
        retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
        connect_timeout=config.connect_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
        user_agent_extra="spotrun-operator",
    )
    return boto3.session.Session().client(
        "ec2", region_name=region, endpoint_url=config.endpoint_url, config=botocore_config
    )


def _as_utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def parse_record(rec: Mapping[str, Any]) -> SpotPrice | None:
    """One SpotPriceHistory entry, or None when it is not a usable Linux price."""
    # "Linux/UNIX" and "Linux/UNIX (Amazon VPC)" are the same product; SUSE/RHEL are not.
    if not str(rec.get("ProductDescription", "")).startswith(LINUX_PRODUCT):
        return None
    try:
        price = float(rec["SpotPrice"])
        itype, zone, ts = str(rec["InstanceType"]), str(rec["AvailabilityZone"]), rec["Timestamp"]
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(price) and price > 0) or not isinstance(ts, datetime):
        return None
    return SpotPrice(itype, zone, price, _as_utc(ts))


def fetch_spot_price_history(
    client: Any, instance_types: Iterable[str], *, start: datetime, page_size: int
) -> list[SpotPrice]:
    """Every Linux spot price record since ``start``, across all pages (may raise)."""
    paginator = client.get_paginator("describe_spot_price_history")
    pages = paginator.paginate(
        InstanceTypes=sorted(set(instance_types)),
        ProductDescriptions=[LINUX_PRODUCT],
        StartTime=start,
        PaginationConfig={"PageSize": page_size},
    )
    out: list[SpotPrice] = []
    for page in pages:
        for rec in page.get("SpotPriceHistory", []):
            parsed = parse_record(rec)
            if parsed is not None:
                out.append(parsed)
    return out


def newest_per_zone(records: Iterable[SpotPrice]) -> dict[str, dict[str, SpotPrice]]:
    """instance type -> zone -> the newest record; on equal times the higher price wins."""
    out: dict[str, dict[str, SpotPrice]] = {}
    for rec in records:
        zones = out.setdefault(rec.instance_type, {})
        cur = zones.get(rec.zone)
        if cur is None or (rec.timestamp, rec.usd_per_hour) > (cur.timestamp, cur.usd_per_hour):
            zones[rec.zone] = rec
    return out


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
        if zones:
            # Zone unknown or unpriced: the dearest zone, so budgets never under-count.
            rec = max(zones.values(), key=lambda r: (r.usd_per_hour, r.timestamp))
            return Quote(rec.usd_per_hour, "aws-other-zone", rec.timestamp)
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
            now = self._now()
            due = [t for t in types if self._due(t, now)]
            if due:
                self._fetch(due, now)
            return self._build(types, now)

    def _now(self) -> datetime:
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
