"""pricing.py and aws_prices.py against moto's server on loopback: every boto3 path, the cache
and the fallback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_fakes import T0, ErrorProxy, FakeClock, SpotHistory, rec

from spotrun_operator.money.aws_prices import (
    PricingConfig,
    SpotPrice,
    make_ec2_client,
    parse_record,
)
from spotrun_operator.money.cost import Price
from spotrun_operator.money.pricing import PriceBook, PriceSnapshot, Quote
from spotrun_operator.money.pricing_background import BackgroundPriceBook

P4D, P5 = "p4d.24xlarge", "p5.48xlarge"
MIN = timedelta(minutes=1)
RECORDS = [
    rec(P4D, "us-east-1a", "10.0000", T0 - 300 * MIN),  # superseded, before the window
    rec(P4D, "us-east-1a", "11.5731", T0 - 40 * MIN),
    rec(P4D, "us-east-1a", "12.2500", T0 - 10 * MIN),  # newest in a
    rec(P4D, "us-east-1b", "9.8765", T0 - 180 * MIN),  # before the window: in effect at start
    rec(P4D, "us-east-1c", "13.1000", T0 - 50 * MIN),
    rec(P4D, "us-east-1c", "12.9000", T0 - 20 * MIN),  # newest in c, cheaper than before
    rec(P4D, "us-west-2a", "1.0000", T0 - 5 * MIN),  # another region
    rec(P4D, "us-east-1d", "99.0000", T0 - 5 * MIN, product="SUSE Linux"),
    rec(P5, "us-east-1a", "40.1234", T0 - 30 * MIN),
]


def book(url: str, clock: FakeClock | None = None, **kw: Any) -> PriceBook:
    cfg = PricingConfig(**{"region": "us-east-1", "endpoint_url": url, **kw})
    return PriceBook(cfg, clock=clock or FakeClock())


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def test_newest_price_per_zone_across_zones_and_times(
    moto_url: str, spot_history: SpotHistory
) -> None:
    spot_history.records = RECORDS
    snap = book(moto_url).snapshot([P4D])
    assert {z: (p.usd_per_hour, p.timestamp) for z, p in snap.spot[P4D].items()} == {
        "us-east-1a": (12.25, T0 - 10 * MIN),
        "us-east-1b": (9.8765, T0 - 180 * MIN),
        "us-east-1c": (12.9, T0 - 20 * MIN),
    }
    assert snap.spot_quote(P4D, "us-east-1b") == Quote(9.8765, "aws", T0 - 180 * MIN)
    # A zone AWS did not price (or an unknown one): the dearest zone, never an under-count.
    assert snap.spot_quote(P4D, "us-east-1f") == Quote(12.9, "aws-other-zone", T0 - 20 * MIN)
    assert snap.spot_quote(P4D) == Quote(12.9, "aws-other-zone", T0 - 20 * MIN)
    assert snap.on_demand_usd_per_hour(P4D) == 32.77
    assert snap.price_table()[P4D] == Price(12.9, 32.77)
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("True", "SpotPriceHistory")
    assert "p4d.24xlarge $9.8765-$12.9000/h in 3 zone(s)" in cond.message
    [req] = spot_history.requests
    assert req["InstanceTypes"] == [P4D]
    assert req["ProductDescriptions"] == ["Linux/UNIX"]
    assert req["Region"] == "us-east-1"
    assert utc(req["StartTime"]) == T0 - timedelta(hours=1)  # lookback from the clock


def test_pagination_follows_next_token_to_the_last_page(
    moto_url: str, spot_history: SpotHistory
) -> None:
    spot_history.records = [
        *[rec(P4D, "us-east-1a", f"{10 + i}.5", T0 - i * MIN) for i in range(4)],
        *[rec(P4D, "us-east-1b", f"{20 + i}.5", T0 - (10 + i) * MIN) for i in range(4)],
        rec(P4D, "us-east-1d", "7.25", T0 - 55 * MIN),  # oldest: served on the last page
    ]
    snap = book(moto_url, page_size=2).snapshot([P4D])
    assert [r.get("NextToken") for r in spot_history.requests] == [None, "2", "4", "6", "8"]
    assert {r["MaxResults"] for r in spot_history.requests} == {2}
    assert {z: p.usd_per_hour for z, p in snap.spot[P4D].items()} == {
        "us-east-1a": 10.5,
        "us-east-1b": 20.5,
        "us-east-1d": 7.25,
    }


def test_stock_moto_answer_is_understood(moto_url: str) -> None:
    # moto's own implementation: "Linux/UNIX (Amazon VPC)", one price per offered zone.
    snap = book(moto_url).snapshot([P4D])
    zones = snap.spot[P4D]
    assert zones and all(z.startswith("us-east-1") for z in zones)
    assert {p.usd_per_hour for p in zones.values()} == {0.00001}
    assert snap.condition().status == "True"


def test_unknown_instance_type_falls_back_to_the_table(moto_url: str) -> None:
    snap = book(moto_url).snapshot(["p9.imaginary"])
    assert snap.spot_quote("p9.imaginary", "us-east-1a") == Quote(None, "unknown")
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("False", "NoSpotPriceData")
    assert "no Linux/UNIX spot price for p9.imaginary in us-east-1" in cond.message
    assert "p9.imaginary has no price" in cond.message
    # Known to the (overridden) on-demand table: spot is estimated from it.
    snap = book(moto_url, on_demand_overrides={"p9.imaginary": 10.0}, spot_fraction=0.25).snapshot(
        ["p9.imaginary"]
    )
    assert snap.spot_quote("p9.imaginary", "us-east-1a") == Quote(2.5, "table-estimate")
    assert "p9.imaginary spot estimated 25% x $10.00/h = $2.50/h" in snap.condition().message


def test_missing_region_falls_back_then_irsa_env_region_works(
    moto_url: str, spot_history: SpotHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spot_history.records = RECORDS
    snap = book(moto_url, region=None).snapshot([P4D])
    assert spot_history.requests == []
    assert snap.spot_quote(P4D, "us-east-1a") == Quote(32.77 * 0.35, "table-estimate")
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("False", "NoRegion")
    assert "no AWS region configured" in cond.message
    assert "p4d.24xlarge spot estimated 35% x $32.77/h = $11.47/h" in cond.message
    # IRSA pods get AWS_REGION from the EKS webhook; region=None then resolves to it.
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    snap = book(moto_url, region=None).snapshot([P4D])
    assert snap.region == "us-east-1"
    assert snap.spot_quote(P4D, "us-east-1a") == Quote(12.25, "aws", T0 - 10 * MIN)


def test_missing_credentials_fall_back(
    moto_url: str, spot_history: SpotHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    snap = book(moto_url).snapshot([P4D])
    assert spot_history.requests == []
    assert snap.condition().reason == "NoCredentials"
    assert snap.spot_quote(P4D).source == "table-estimate"


def test_throttling_is_retried_until_it_passes(
    moto_server: tuple[str, int], spot_history: SpotHistory, backoffs: list[int]
) -> None:
    spot_history.records = RECORDS
    with ErrorProxy(moto_server) as proxy:
        proxy.queue = [
            (503, "RequestLimitExceeded", "Request limit exceeded."),
            (400, "Throttling", "Rate exceeded"),
        ]
        snap = book(proxy.url, max_attempts=4).snapshot([P4D])
    assert proxy.actions == ["DescribeSpotPriceHistory"] * 3
    assert backoffs == [1, 2]  # botocore backed off before each retry
    assert snap.condition().status == "True"
    assert snap.spot_quote(P4D, "us-east-1a").usd_per_hour == 12.25


def test_throttling_that_persists_falls_back_with_the_reason(
    moto_server: tuple[str, int], backoffs: list[int]
) -> None:
    with ErrorProxy(moto_server) as proxy:
        proxy.always = (503, "RequestLimitExceeded", "Request limit exceeded.")
        snap = book(proxy.url, max_attempts=3).snapshot([P4D])
    assert len(proxy.actions) == 3 and backoffs == [1, 2]
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("False", "Throttled")
    assert (
        "DescribeSpotPriceHistory in us-east-1: RequestLimitExceeded (Request limit exceeded.) "
        "after 2 retries" in cond.message
    )
    assert snap.spot_quote(P4D, "us-east-1a") == Quote(32.77 * 0.35, "table-estimate")


def test_access_denied_is_not_retried(moto_server: tuple[str, int], backoffs: list[int]) -> None:
    with ErrorProxy(moto_server) as proxy:
        proxy.always = (403, "UnauthorizedOperation", "You are not authorized.")
        snap = book(proxy.url).snapshot([P4D])
    assert len(proxy.actions) == 1 and backoffs == []
    cond = snap.condition()
    assert cond.reason == "AccessDenied"
    assert "needs ec2:DescribeSpotPriceHistory" in cond.message


def test_unreachable_endpoint_falls_back_with_the_reason(
    refused_url: str, backoffs: list[int]
) -> None:
    snap = book(refused_url, max_attempts=2).snapshot([P4D])
    assert backoffs == [1]  # a refused connection is retried like a throttle
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("False", "EndpointUnreachable")
    assert refused_url in cond.message
    assert snap.spot_quote(P4D).source == "table-estimate"


def test_cache_respects_the_refresh_interval(moto_url: str, spot_history: SpotHistory) -> None:
    spot_history.records = list(RECORDS)
    clock = FakeClock()
    prices = book(moto_url, clock, refresh_seconds=600)
    assert prices.snapshot([P4D]).spot_quote(P4D, "us-east-1a").usd_per_hour == 12.25
    spot_history.records.append(rec(P4D, "us-east-1a", "14.0000", T0 + 5 * MIN))
    clock.advance(599)
    assert prices.snapshot([P4D]).spot_quote(P4D, "us-east-1a").usd_per_hour == 12.25
    assert len(spot_history.requests) == 1
    clock.advance(1)
    assert prices.snapshot([P4D]).spot_quote(P4D, "us-east-1a").usd_per_hour == 14.0
    assert len(spot_history.requests) == 2
    assert utc(spot_history.requests[1]["StartTime"]) == T0 + timedelta(seconds=600 - 3600)


def test_cache_fetches_only_types_it_lacks(moto_url: str, spot_history: SpotHistory) -> None:
    spot_history.records = RECORDS
    prices = book(moto_url)
    prices.snapshot([P4D])
    snap = prices.snapshot([P4D, P5])
    prices.snapshot([P5, P4D])
    assert [r["InstanceTypes"] for r in spot_history.requests] == [[P4D], [P5]]
    assert snap.spot_quote(P5, "us-east-1a").usd_per_hour == 40.1234
    assert snap.instance_types == (P4D, P5)


def test_failures_keep_last_good_prices_then_age_out(
    moto_server: tuple[str, int], spot_history: SpotHistory, backoffs: list[int]
) -> None:
    spot_history.records = RECORDS
    clock = FakeClock()
    with ErrorProxy(moto_server) as proxy:
        prices = book(
            proxy.url,
            clock,
            refresh_seconds=600,
            failure_retry_seconds=60,
            max_stale_seconds=1800,
            max_attempts=1,
        )
        prices.snapshot([P4D])
        proxy.always = (503, "RequestLimitExceeded", "Request limit exceeded.")
        clock.advance(600)
        snap = prices.snapshot([P4D])
        # Stale AWS prices beat a table guess, but the condition says the fetch failed.
        assert snap.spot_quote(P4D, "us-east-1a") == Quote(12.25, "aws", T0 - 10 * MIN)
        cond = snap.condition()
        assert (cond.status, cond.reason) == ("False", "Throttled")
        assert "p4d.24xlarge uses AWS prices fetched 2026-03-01T12:00Z" in cond.message
        clock.advance(59)
        prices.snapshot([P4D])
        assert len(proxy.actions) == 2  # a failed fetch is not repeated before 60 s
        clock.advance(1)
        prices.snapshot([P4D])
        assert len(proxy.actions) == 3
        clock.advance(1200)  # 1800 s after the last success: too old to trust
        assert prices.snapshot([P4D]).spot_quote(P4D, "us-east-1a").source == "table-estimate"
        proxy.always = None
        clock.advance(60)
        snap = prices.snapshot([P4D])
    assert snap.condition().status == "True"
    assert snap.spot_quote(P4D, "us-east-1a").source == "aws"


def test_client_config_and_record_parsing() -> None:
    client = make_ec2_client(
        PricingConfig(region="eu-west-1", retry_mode="adaptive", max_attempts=7)
    )
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert client.meta.config.connect_timeout == 3.0
    naive = datetime(2026, 3, 1, 12, 0)
    assert parse_record(rec(P4D, "us-east-1a", "12.5", naive)) == SpotPrice(
        P4D, "us-east-1a", 12.5, T0
    )
    assert parse_record(rec(P4D, "a", "12.5", T0, product="Linux/UNIX (Amazon VPC)")) is not None
    assert parse_record(rec(P4D, "a", "12.5", T0, product="SUSE Linux")) is None
    assert parse_record(rec(P4D, "a", "0", T0)) is None
    assert parse_record(rec(P4D, "a", "n/a", T0)) is None
    with pytest.raises(ValueError, match="spot_fraction"):
        PricingConfig(spot_fraction=0.0)
    with pytest.raises(ValueError, match="aware"):
        PriceBook(PricingConfig(region="us-east-1"), clock=lambda: naive).snapshot([P4D])


def test_unexpected_errors_fall_back_instead_of_raising() -> None:
    def broken(config: PricingConfig) -> Any:
        raise RuntimeError("endpoint resolver exploded")

    prices = PriceBook(PricingConfig(region="us-east-1"), clock=FakeClock(), client_factory=broken)
    snap = prices.snapshot([P4D])
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("False", "AWSError")
    assert "RuntimeError: endpoint resolver exploded" in cond.message
    assert snap.spot_quote(P4D).source == "table-estimate"


class GatedBook(PriceBook):
    """A PriceBook whose every snapshot first waits for ``gate``: AWS hanging."""

    def __init__(self, gate: threading.Event, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = gate

    def snapshot(self, instance_types: Iterable[str]) -> PriceSnapshot:
        assert self.gate.wait(30)
        return super().snapshot(instance_types)


def timed(fn: Callable[[], PriceSnapshot]) -> tuple[PriceSnapshot, float]:
    start = time.monotonic()
    snap = fn()
    return snap, time.monotonic() - start


def eventually(what: str, fn: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # poll interval, bounded by the deadline above


def test_background_book_never_holds_callers_up_while_aws_hangs(
    moto_url: str, spot_history: SpotHistory
) -> None:
    spot_history.records = list(RECORDS)
    gate, clock = threading.Event(), FakeClock()
    cfg = PricingConfig(region="us-east-1", endpoint_url=moto_url)
    prices = BackgroundPriceBook(GatedBook(gate, cfg, clock=clock), wait_seconds=0.2)

    # Before AWS ever answered: table estimates after the short wait, and the reason.
    snap, took = timed(lambda: prices.snapshot([P4D]))
    assert took < 2
    cond = snap.condition()
    assert (cond.status, cond.reason) == ("False", "EndpointUnreachable")
    assert "DescribeSpotPriceHistory in us-east-1: no answer after 0.2s yet" in cond.message
    assert "p4d.24xlarge spot estimated 35% x $32.77/h" in cond.message
    assert snap.spot_quote(P4D).source == "table-estimate"

    gate.set()  # AWS answers: the next caller gets its prices
    eventually("AWS prices", lambda: prices.snapshot([P4D]).condition().status == "True")
    assert prices.snapshot([P4D]).spot_quote(P4D, "us-east-1a").usd_per_hour == 12.25

    # The refresh hangs: the caller that started it waits briefly, the others not at all,
    # and both keep the last answer.
    gate.clear()
    clock.advance(601)
    spot_history.records.append(rec(P4D, "us-east-1a", "14.0000", T0 + 5 * MIN))
    for most in (2.0, 0.1):
        snap, took = timed(lambda: prices.snapshot([P4D]))
        assert took < most and snap.spot_quote(P4D, "us-east-1a").usd_per_hour == 12.25
    gate.set()
    eventually(
        "the refreshed price",
        lambda: prices.snapshot([P4D]).spot_quote(P4D, "us-east-1a").usd_per_hour == 14.0,
    )
