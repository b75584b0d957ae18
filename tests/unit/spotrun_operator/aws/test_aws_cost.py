"""cost.py: node-seconds x prices, by hand. Prices are chosen exact in binary (12.5, 13.0,
32.0) so every figure below is the exact float, not an approximation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest

from spotrun_api.base import to_json
from spotrun_api.money import fmt_usd
from spotrun_api.status import Archived, Attempt
from spotrun_operator.money.aws_prices import SpotPrice
from spotrun_operator.money.cost import (
    DEFAULT_PRICES,
    Cost,
    Price,
    Segment,
    attempt_cost,
    burn_rate_usd_per_second,
    segment_cost,
)
from spotrun_operator.money.pricing import PriceSnapshot

P4D = "p4d.24xlarge"
A, B = "us-east-1a", "us-east-1b"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def snapshot(on_demand: dict[str, float] | None = None) -> PriceSnapshot:
    """Zone-aware prices as the PriceBook would hand them out: p4d spot $12.50/h in
    us-east-1a, $13.00/h in us-east-1b, on-demand $32.00/h."""
    zones = {z: SpotPrice(P4D, z, usd, T0) for z, usd in ((A, 12.5), (B, 13.0))}
    return PriceSnapshot(
        taken_at=T0,
        region="us-east-1",
        instance_types=(P4D,),
        spot=MappingProxyType({P4D: MappingProxyType(zones)}),
        fetched_at=MappingProxyType({P4D: T0}),
        errors=MappingProxyType({}),
        on_demand_table=MappingProxyType({P4D: 32.0} if on_demand is None else on_demand),
        spot_fraction=0.35,
    )


def test_spot_gang_across_two_zones() -> None:
    c = attempt_cost(
        seconds=3600,
        nodes=2,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="spot",
        prices=snapshot(),
        zones=[A, B],
    )
    assert (c.spot_usd, c.on_demand_usd, c.on_demand_equivalent_usd) == (25.5, 0.0, 64.0)
    assert c.gpu_hours == 16.0
    assert c.total_usd == 25.5
    assert c.savings_percent == 60.2  # 100 * (1 - 25.5 / 64) = 60.15625


def test_spot_then_on_demand_fallback_run_total() -> None:
    spot = attempt_cost(
        seconds=3600,
        nodes=2,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="spot",
        prices=snapshot(),
        zones=[A, B],
    )
    od = attempt_cost(
        seconds=1800,
        nodes=2,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="on-demand",
        prices=snapshot(),
    )
    assert (od.spot_usd, od.on_demand_usd, od.on_demand_equivalent_usd, od.gpu_hours) == (
        0.0,
        32.0,
        32.0,
        8.0,
    )
    # The first attempt is frozen into status.attempts[] and read back.
    total = Cost.of(Attempt(attempt=1, **spot.frozen_fields())) + od
    assert to_json(total.status()) == {
        "spotUSD": 25.5,
        "onDemandUSD": 32.0,
        "totalUSD": 57.5,
        "onDemandEquivalentUSD": 96.0,
        "savingsPercent": 40.1,  # 100 * (1 - 57.5 / 96) = 40.104...
        "gpuHours": 24.0,
    }


def test_default_table_p4d_two_hours() -> None:
    c = attempt_cost(
        seconds=7200, nodes=1, gpus_per_node=8, instance_type=P4D, capacity_type="spot"
    )
    assert DEFAULT_PRICES[P4D] == Price(32.77 * 0.35, 32.77)
    assert to_json(c.status()) == {
        "spotUSD": 22.94,  # 2 h x $11.4695/h = 22.939
        "onDemandUSD": 0.0,
        "totalUSD": 22.94,
        "onDemandEquivalentUSD": 65.54,  # 2 h x $32.77/h
        "savingsPercent": 65.0,
        "gpuHours": 16.0,
    }


def test_money_rounds_half_up_like_people_do() -> None:
    # 2.5 h at $32.77/h = 81.925: round() would give 81.92 (half-even on the binary value).
    c = attempt_cost(
        seconds=9000, nodes=1, gpus_per_node=8, instance_type=P4D, capacity_type="on-demand"
    )
    assert c.on_demand_usd == 9000 * 32.77 / 3600
    assert c.status().on_demand_usd == 81.93
    assert fmt_usd(1003.125) == "$1,003.13"
    assert fmt_usd(0.00125) == "$0.0013"


def test_unknown_or_missing_zones_pay_the_dearest_zone() -> None:
    short = attempt_cost(
        seconds=3600,
        nodes=2,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="spot",
        prices=snapshot(),
        zones=[A],
    )
    assert short.spot_usd == 12.5 + 13.0
    other = attempt_cost(
        seconds=3600,
        nodes=1,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="spot",
        prices=snapshot(),
        zones=["us-east-1z"],
    )
    assert other.spot_usd == 13.0


def test_unpriced_instance_type_counts_gpu_hours_but_no_dollars() -> None:
    c = attempt_cost(
        seconds=3600,
        nodes=2,
        gpus_per_node=4,
        instance_type="x9.weird",
        capacity_type="spot",
        prices={P4D: Price(12.5, 32.0)},
    )
    assert (c.total_usd, c.on_demand_equivalent_usd) == (0.0, 0.0)
    assert (c.gpu_hours, c.unpriced_node_seconds) == (8.0, 7200.0)
    assert c.savings_percent == 0.0


def test_no_on_demand_price_claims_no_saving_and_dearer_spot_shows_plus() -> None:
    c = attempt_cost(
        seconds=3600,
        nodes=1,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="spot",
        prices=snapshot(on_demand={}),
        zones=[B],
    )
    assert (c.spot_usd, c.on_demand_equivalent_usd, c.savings_percent) == (13.0, 13.0, 0.0)
    dear = attempt_cost(
        seconds=3600,
        nodes=1,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="spot",
        prices={P4D: Price(40.0, 32.0)},
    )
    assert dear.savings_percent == -25.0


def test_segments_running_and_finished_and_burn_rate() -> None:
    now = T0 + timedelta(minutes=30)
    done = Segment(
        T0 - timedelta(hours=2),
        T0 - timedelta(hours=1),
        nodes=1,
        gpus_per_node=8,
        instance_type=P4D,
        zones=(A,),
    )
    running = Segment(T0, None, nodes=2, gpus_per_node=8, instance_type=P4D, zones=(A, B))
    future = Segment(
        now + timedelta(minutes=1),
        None,
        nodes=1,
        gpus_per_node=8,
        instance_type=P4D,
        capacity_type="on-demand",
    )
    c = sum((segment_cost(s, snapshot(), now) for s in (done, running, future)), Cost())
    # 1 h at 12.5, then 0.5 h at 12.5 + 13.0; the future segment has not run yet.
    assert c.spot_usd == 12.5 + (6.25 + 6.5)
    assert c.on_demand_usd == 0.0
    assert c.gpu_hours == 8.0 + 8.0
    rate = burn_rate_usd_per_second([done, running], snapshot())
    assert rate == 12.5 / 3600 + 13.0 / 3600
    assert burn_rate_usd_per_second([future], snapshot()) == 32.0 / 3600


def test_attempt_fields_round_trip_and_bad_fields() -> None:
    c = Cost(spot_usd=1.0 / 3.0, on_demand_usd=2.5, on_demand_equivalent_usd=10.0, gpu_hours=0.125)
    entry = Attempt(attempt=1, **c.frozen_fields())
    assert to_json(entry) == {
        "attempt": 1,
        "spotUSD": 0.333333,
        "onDemandUSD": 2.5,
        "onDemandEquivalentUSD": 10.0,
        "gpuHours": 0.125,
    }
    assert Cost.of(entry) == Cost(0.333333, 2.5, 10.0, 0.125)
    garbage = Attempt(attempt=2, spot_usd=math.inf, on_demand_equivalent_usd=math.nan)
    assert Cost.of(garbage) == Cost() and Cost.of(None) == Cost()
    archived = Archived(attempts=40, spot_usd=100.25, on_demand_equivalent_usd=300.5, gpu_hours=80)
    assert (Cost.of(archived) + c).spot_usd == 100.25 + 1.0 / 3.0


def test_formatting_and_validation() -> None:
    assert fmt_usd(1234.5) == "$1,234.50"
    assert fmt_usd(0.004) == "$0.0040"
    assert fmt_usd(0.0) == "$0.00"
    with pytest.raises(ValueError, match="capacity_type"):
        attempt_cost(
            seconds=1, nodes=1, gpus_per_node=8, instance_type=P4D, capacity_type="preemptible"
        )
    with pytest.raises(ValueError, match="3 zones for 2 nodes"):
        attempt_cost(
            seconds=1,
            nodes=2,
            gpus_per_node=8,
            instance_type=P4D,
            capacity_type="spot",
            zones=["a", "b", "c"],
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        Segment(datetime(2026, 1, 1), None, 1, 8, P4D)
