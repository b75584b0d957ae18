"""GPU instance prices: the on-demand list-price table, and EC2 spot price history records.

Shared by the operator (which prices running attempts and enforces budgets) and the
``kubectl spotrun estimate`` command (which prices a run before it starts), so both read
the same table and the same AWS records the same way.

No boto3 here: :func:`fetch_spot_price_history` takes an EC2 client that the caller built
(boto3's ``client("ec2")``), so this package keeps to pydantic and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

LINUX_PRODUCT: Final = "Linux/UNIX"

# us-east-1 Linux on-demand list prices, USD per instance-hour. Regions differ by a few
# percent; the operator overrides entries through its --on-demand-price option.
DEFAULT_ON_DEMAND_USD_PER_HOUR: Final[Mapping[str, float]] = MappingProxyType({
    "p5.48xlarge": 98.32, "p4de.24xlarge": 40.97, "p4d.24xlarge": 32.77,
    "p3dn.24xlarge": 31.212, "p3.16xlarge": 24.48, "p3.8xlarge": 12.24, "p3.2xlarge": 3.06,
    "g5.48xlarge": 16.288, "g5.24xlarge": 8.144, "g5.12xlarge": 5.672, "g5.16xlarge": 4.096,
    "g5.8xlarge": 2.448, "g5.4xlarge": 1.624, "g5.2xlarge": 1.212, "g5.xlarge": 1.006,
    "g4dn.12xlarge": 3.912, "g4dn.2xlarge": 0.752, "g4dn.xlarge": 0.526,
})  # fmt: skip
# The region the table's prices are from.
TABLE_REGION: Final = "us-east-1"
# Spot p4d has long traded near a third of on-demand ($10-13/h against $32.77/h): the spot
# estimate, as this fraction of on-demand, when AWS gives no spot price.
DEFAULT_SPOT_FRACTION: Final = 0.35


@dataclass(frozen=True)
class SpotPrice:
    instance_type: str
    zone: str
    usd_per_hour: float
    timestamp: datetime


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
    """Every Linux spot price record since ``start``, across all pages (may raise whatever
    the client raises). AWS also returns the price in effect at ``start``."""
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


def dearest_zone(zones: Mapping[str, SpotPrice]) -> SpotPrice | None:
    """The zone to charge when the node's zone is unknown: the dearest (then the newest),
    so that budgets never under-count. None when no zone is priced."""
    if not zones:
        return None
    return max(zones.values(), key=lambda r: (r.usd_per_hour, r.timestamp))
