"""Spot prices for ``kubectl spotrun estimate``: EC2 ``DescribeSpotPriceHistory`` through boto3
with the user's own AWS credentials, read by ``spotrun_api.prices`` as the operator reads
them; the on-demand table of the same module. When AWS gives no answer, spot is the table
estimate (35% of on-demand, as in the operator) and the note says why.

boto3 is imported only when AWS is asked (``--pricing table`` never does), and a missing
boto3 falls back to the table like any other failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from spotrun_api.prices import (
    DEFAULT_ON_DEMAND_USD_PER_HOUR,
    DEFAULT_SPOT_FRACTION,
    LINUX_PRODUCT,
    TABLE_REGION,
    SpotPrice,
    fetch_spot_price_history,
    newest_per_zone,
)
from spotrun_cli.estimate_plan import SpotQuote, quote

# AWS also returns the price in effect at StartTime, so an hour finds every zone's price.
LOOKBACK: Final = timedelta(hours=1)
PAGE_SIZE: Final = 1000
# An interactive command: a short wait, one retry, then the table.
CONNECT_TIMEOUT_SECONDS: Final = 3.0
READ_TIMEOUT_SECONDS: Final = 10.0
MAX_ATTEMPTS: Final = 2

Pricing = Literal["aws", "table"]


@dataclass(frozen=True)
class PriceLookup:
    region: str
    source: Literal["aws", "table"]
    """aws: AWS answered (a type it has no price for is still a table estimate)."""
    quotes: Mapping[str, SpotQuote]
    on_demand: Mapping[str, float]
    note: str
    """Where the prices came from, and why AWS's are missing if they are."""


def resolve_region(region: str | None, env: Mapping[str, str] | None = None) -> str:
    """--region, else AWS_DEFAULT_REGION or AWS_REGION, else the table's region."""
    env = os.environ if env is None else env
    return region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or TABLE_REGION


def ec2_client(region: str, endpoint_url: str | None) -> Any:
    """An EC2 client with bounded timeouts and botocore's standard retries; a fresh Session,
    so that nothing from a default session leaks in."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        user_agent_extra="spotrun-cli",
    )
    return boto3.session.Session().client(
        "ec2", region_name=region, endpoint_url=endpoint_url, config=config
    )


def describe_failure(exc: BaseException) -> str:
    """An AWS error code and message (ClientError), else the exception as botocore words it
    (no credentials, no connection)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        err = response["Error"]
        code, msg = str(err.get("Code", "Unknown")), str(err.get("Message", "")).strip()
        return code + (f" ({msg})" if msg else "")
    if isinstance(exc, ImportError):
        return "boto3 is not installed (pip install boto3)"
    return f"{type(exc).__name__}: {exc}"


def _table_note(fraction: float) -> str:
    return f"spot estimated as {fraction:.0%} of on-demand"


def lookup(
    instance_types: Sequence[str],
    *,
    region: str,
    pricing: Pricing = "aws",
    endpoint_url: str | None = None,
    now: datetime | None = None,
    on_demand: Mapping[str, float] = DEFAULT_ON_DEMAND_USD_PER_HOUR,
    spot_fraction: float = DEFAULT_SPOT_FRACTION,
) -> PriceLookup:
    """Spot quotes of ``instance_types`` in ``region``; on-demand from the table."""
    types = list(dict.fromkeys(instance_types))
    od_note = f"on-demand: {TABLE_REGION} list prices (table)"
    zones: dict[str, dict[str, SpotPrice]] = {}
    if pricing == "table":
        note = f"--pricing table: {_table_note(spot_fraction)}; {od_note}"
        source: Literal["aws", "table"] = "table"
    else:
        start = (now or datetime.now(UTC)) - LOOKBACK
        try:
            client = ec2_client(region, endpoint_url)
            records = fetch_spot_price_history(client, types, start=start, page_size=PAGE_SIZE)
        except Exception as exc:  # any failure: the table, and the output says why
            why = describe_failure(exc)
            note = (
                f"AWS gave no spot prices (DescribeSpotPriceHistory in {region}: {why}): "
                f"{_table_note(spot_fraction)}; {od_note}"
            )
            source = "table"
        else:
            zones = newest_per_zone(records)
            note = f"spot: AWS DescribeSpotPriceHistory in {region}, the dearest zone; {od_note}"
            missing = [t for t in types if not zones.get(t)]
            if missing:
                note += (
                    f"; EC2 has no {LINUX_PRODUCT} spot price for {', '.join(missing)} in "
                    f"{region}: {_table_note(spot_fraction)}"
                )
            source = "aws"
    quotes = {t: quote(zones.get(t, {}), on_demand.get(t), spot_fraction) for t in types}
    unknown = [t for t in types if quotes[t].source == "unknown"]
    if unknown:
        note += f"; no price known for {', '.join(unknown)} (not in the on-demand table)"
    return PriceLookup(region, source, quotes, dict(on_demand), note)
