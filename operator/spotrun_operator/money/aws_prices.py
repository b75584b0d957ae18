"""Spot prices from EC2 ``DescribeSpotPriceHistory``: the only module of the operator doing
AWS I/O (boto3, default credential chain, which is the pod's IRSA role on EKS).

How prices are fetched (:class:`PricingConfig`) and the errors AWS raises mapped to
``PricingAvailable`` condition reasons; ``pricing.PriceBook`` caches the prices. The records
AWS returns are read by ``spotrun_api.prices``, which the kubectl plugin shares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

# The records and their parsing are shared with the kubectl plugin's estimate (spotrun_api);
# re-exported here, where the rest of the operator finds its price pieces.
from spotrun_api.prices import (
    DEFAULT_ON_DEMAND_USD_PER_HOUR,
    DEFAULT_SPOT_FRACTION,
    LINUX_PRODUCT,
    SpotPrice,
    fetch_spot_price_history,
    newest_per_zone,
    parse_record,
)

__all__ = [
    "LINUX_PRODUCT",
    "PricingConfig",
    "PricingFailure",
    "SpotPrice",
    "classify_error",
    "fetch_spot_price_history",
    "make_ec2_client",
    "newest_per_zone",
    "parse_record",
]

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
class PricingFailure:
    """Why AWS gave no prices: ``reason`` is the condition reason, ``message`` for humans."""

    reason: str
    message: str


def classify_error(exc: Exception, region: str | None) -> PricingFailure:
    """Map a boto3/botocore exception to a condition reason and a message naming the cause."""
    from botocore.exceptions import (  # see make_ec2_client on why imported here
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

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

    boto3 is imported here, not with the module: an operator with ``--pricing table``
    never talks to AWS, and boto3 with botocore costs ~8 MiB of resident memory.
    """
    import boto3
    from botocore.config import Config

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
