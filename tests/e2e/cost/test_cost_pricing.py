"""Cost of a run on the real cluster, priced by EC2 DescribeSpotPriceHistory (moto's server
on loopback, seeded per zone) or, when AWS cannot be reached, by the on-demand table; the
figures are checked against the timestamps the operator recorded, the COST column of
``kubectl get tr`` and the operator's /metrics."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_fakes import SpotHistory, rec
from cost_helpers import (
    GPUS,
    P4D,
    P4D_ON_DEMAND,
    StartOperator,
    free_port,
    node_usd,
    printed_columns,
    sample,
    seconds,
)
from kubernetes import client
from operator_metrics import scrape

from controller_helpers import (
    condition,
    create,
    patch_spec,
    running_gang,
    training_run,
    wait_status,
)
from kube_helpers import poll
from spotrun_api.money import fmt_usd

# Seeded newest Linux/UNIX spot prices per zone: far from the table's estimate (35% of
# $32.77 = $11.4695/h) and from each other, so a wrong source or zone shows.
SPOT = {"us-east-1a": 9.8765, "us-east-1b": 14.3210, "us-east-1c": 20.5}
NODES = 2
BUDGET = 1000.0
# Spread the gang over both zones of the fleet (a preference: never blocks scheduling).
SPREAD = {
    "spec": {
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"spotrun.dev/run": "priced"}},
            }
        ]
    }
}


def seed(history: SpotHistory) -> None:
    now = datetime.now(UTC)
    h = timedelta(hours=1)
    history.records = [
        # Superseded prices, and ones of other products: none of them may be used.
        rec(P4D, "us-east-1a", "15.0000", now - 5 * h),
        rec(P4D, "us-east-1b", "7.0000", now - 4 * h),
        rec(P4D, "us-east-1a", "1.0000", now - h / 4, product="SUSE Linux"),
        rec(P4D, "us-east-1a", f"{SPOT['us-east-1a']:.4f}", now - 2 * h),  # before the window
        rec(P4D, "us-east-1b", f"{SPOT['us-east-1b']:.4f}", now - h / 3),
        rec(P4D, "us-east-1c", f"{SPOT['us-east-1c']:.4f}", now - h / 2),
        rec("p5.48xlarge", "us-east-1a", "30.0000", now - h / 2),
    ]


def expected_live(st: dict[str, Any], hourly: list[float]) -> tuple[float, float]:
    """Spot USD the operator should have written at ``cost.updatedAt`` and the tolerance:
    both timestamps are to the second, the figure to the cent."""
    entry = st["attempts"][-1]
    ran = seconds(entry["startedAt"], st["cost"]["updatedAt"])
    return node_usd(ran, hourly), node_usd(1.0, hourly) + 0.005 + 1e-9


def check_frozen(st: dict[str, Any], hourly: list[float]) -> dict[str, Any]:
    """A stopped attempt's figures are exact functions of its recorded timestamps."""
    (entry,) = st["attempts"]
    ran = seconds(entry["startedAt"], entry["stoppedAt"])
    assert ran > 0
    assert entry["spotUSD"] == pytest.approx(round(node_usd(ran, hourly), 6), abs=2e-6)
    assert entry["onDemandUSD"] == 0
    equivalent = node_usd(ran, [P4D_ON_DEMAND] * len(hourly))
    assert entry["onDemandEquivalentUSD"] == pytest.approx(round(equivalent, 6), abs=2e-6)
    assert entry["gpuHours"] == pytest.approx(ran * len(hourly) * GPUS / 3600, abs=2e-6)
    cost = st["cost"]
    assert cost["spotUSD"] == cost["totalUSD"] == pytest.approx(entry["spotUSD"], abs=0.0051)
    assert cost["onDemandUSD"] == 0
    assert cost["onDemandEquivalentUSD"] == pytest.approx(equivalent, abs=0.0051)
    assert cost["gpuHours"] == pytest.approx(ran * len(hourly) * GPUS / 3600, abs=0.0051)
    saving = 100 * (1 - entry["spotUSD"] / entry["onDemandEquivalentUSD"])
    assert cost["savingsPercent"] == pytest.approx(saving, abs=0.051)
    return dict(entry)


def suspend(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    patch_spec(custom, namespace, name, {"suspend": True})
    st: dict[str, Any] = wait_status(
        custom,
        namespace,
        name,
        "the run Suspended with its attempt's cost frozen",
        lambda s: (
            s.get("phase") == "Suspended"
            and "spotUSD" in (s.get("attempts") or [{}])[-1]
            and (s.get("cost") or {}).get("updatedAt", "") >= s["attempts"][-1]["stoppedAt"]
        ),
    )
    return st


def test_spot_prices_from_aws_price_each_node_in_its_zone(
    start_operator: StartOperator,
    moto_url: str,
    spot_history: SpotHistory,
    aws_env: dict[str, str],
    checkpoint_pvc: str,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    seed(spot_history)
    port = free_port()
    start_operator(
        "--pricing=aws",
        f"--aws-endpoint-url={moto_url}",
        "--cost-update-seconds=2",
        f"--metrics-port={port}",
        "--metrics-address=127.0.0.1",
        env=aws_env,
    )
    create(
        custom,
        namespace,
        training_run("priced", nodes=NODES, budget={"maxUSD": BUDGET}, podTemplate=SPREAD),
    )
    running_gang(core, namespace, "priced", 1, n=NODES)

    def priced_a_while(s: dict[str, Any]) -> bool:
        entry = (s.get("attempts") or [{}])[-1]
        at = (s.get("cost") or {}).get("updatedAt")
        return (
            s.get("phase") == "Running"
            and condition(s, "PricingAvailable").get("status") == "True"
            and bool(entry.get("startedAt") and at)
            and seconds(entry["startedAt"], at) >= 4
        )

    st = wait_status(custom, namespace, "priced", "a few seconds of priced running", priced_a_while)
    pricing = condition(st, "PricingAvailable")
    assert pricing["reason"] == "SpotPriceHistory", pricing
    assert "spot prices from AWS (us-east-1)" in pricing["message"]
    assert f"{P4D} $9.8765-$20.5000/h in 3 zone(s)" in pricing["message"], pricing
    # The EC2 API was asked for the run's instance type, Linux only, in us-east-1.
    asked = spot_history.requests[0]
    assert asked["Region"] == "us-east-1" and asked["InstanceTypes"] == [P4D]
    assert asked["ProductDescriptions"] == ["Linux/UNIX"]

    entry = st["attempts"][-1]
    assert (entry["instanceType"], entry["nodes"], entry["gpus"]) == (P4D, NODES, GPUS)
    assert len(entry["zones"]) == NODES and set(entry["zones"]) <= {"us-east-1a", "us-east-1b"}
    hourly = [SPOT[z] for z in entry["zones"]]
    want, tol = expected_live(st, hourly)
    cost = st["cost"]
    assert cost["spotUSD"] == pytest.approx(want, abs=tol), (cost, entry)
    assert cost["totalUSD"] == cost["spotUSD"] and cost["onDemandUSD"] == 0
    # Same node-seconds on both sides: the saving does not depend on time.
    saving = 100 * (1 - sum(hourly) / (NODES * P4D_ON_DEMAND))
    assert cost["savingsPercent"] == pytest.approx(saving, abs=0.051), cost
    ran = seconds(entry["startedAt"], cost["updatedAt"])
    assert cost["gpuHours"] == pytest.approx(ran * NODES * GPUS / 3600, abs=0.0051)
    assert condition(st, "WithinBudget")["reason"] == "WithinBudget"

    # kubectl get tr: the COST column is status.cost.totalUSD of the same object, as dollars.
    row = printed_columns(api_client, namespace, "priced")
    assert row["Phase"] == "Running" and row["object"]["status"]["cost"]["totalUSD"] > 0
    assert row["Cost"] == fmt_usd(row["object"]["status"]["cost"]["totalUSD"])

    # Stop the gang: the attempt's cost is frozen from its timestamps, exactly.
    st = suspend(custom, namespace, "priced")
    frozen = check_frozen(st, [SPOT[z] for z in st["attempts"][-1]["zones"]])
    assert condition(st, "PricingAvailable")["status"] == "True"
    row = printed_columns(api_client, namespace, "priced")
    assert row["Phase"] == "Suspended" and row["Cost"] == fmt_usd(st["cost"]["totalUSD"])

    # /metrics: the run's figures, labelled with its namespace and name.
    run = {"namespace": namespace, "run": "priced"}

    def exported() -> dict[str, Any] | None:
        m = scrape(port)
        spot = sample(m, "spotrun_run_cost_usd", **run, capacity="spot")
        return m if spot is not None and spot == pytest.approx(frozen["spotUSD"]) else None

    m = poll("the run's cost on /metrics", exported, timeout=30)
    assert sample(m, "spotrun_run_cost_usd", **run, capacity="on-demand") == 0
    assert sample(m, "spotrun_budget_used_ratio", **run) == pytest.approx(
        frozen["spotUSD"] / BUDGET
    )
    assert sample(m, "spotrun_run_savings_ratio", **run) == pytest.approx(
        1 - frozen["spotUSD"] / frozen["onDemandEquivalentUSD"]
    )


def test_unreachable_aws_falls_back_to_the_table_and_says_so(
    start_operator: StartOperator,
    aws_env: dict[str, str],
    checkpoint_pvc: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    start_operator(
        "--pricing=aws",
        "--cost-update-seconds=2",
        env={**aws_env, "AWS_ENDPOINT_URL_EC2": closed},  # boto3's own endpoint variable
    )
    create(custom, namespace, training_run("offline", nodes=1))
    running_gang(core, namespace, "offline", 1, n=1)

    def estimated_a_while(s: dict[str, Any]) -> bool:
        entry = (s.get("attempts") or [{}])[-1]
        at = (s.get("cost") or {}).get("updatedAt")
        return (
            s.get("phase") == "Running"
            and condition(s, "PricingAvailable").get("status") == "False"
            and bool(entry.get("startedAt") and at)
            and seconds(entry["startedAt"], at) >= 4
        )

    st = wait_status(
        custom, namespace, "offline", "cost estimated from the table", estimated_a_while
    )
    pricing = condition(st, "PricingAvailable")
    assert pricing["reason"] == "EndpointUnreachable", pricing
    assert closed in pricing["message"], pricing
    assert "DescribeSpotPriceHistory in us-east-1" in pricing["message"], pricing
    assert f"{P4D} spot estimated 35% x $32.77/h = $11.47/h" in pricing["message"], pricing

    hourly = [P4D_ON_DEMAND * 0.35]
    want, tol = expected_live(st, hourly)
    assert st["cost"]["spotUSD"] == pytest.approx(want, abs=tol), st["cost"]
    assert st["cost"]["savingsPercent"] == 65.0

    st = suspend(custom, namespace, "offline")
    check_frozen(st, hourly)
    assert condition(st, "PricingAvailable")["reason"] == "EndpointUnreachable"


def test_a_hanging_aws_endpoint_never_holds_the_operator_up(
    start_operator: StartOperator,
    aws_env: dict[str, str],
    checkpoint_pvc: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    """An endpoint that accepts connections and never answers costs boto3 4 x 10 s read
    timeouts per fetch; the operator must go on reconciling meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(64)  # the kernel completes each handshake; nobody ever reads
        url = f"http://127.0.0.1:{hang.getsockname()[1]}"
        start_operator("--pricing=aws", env={**aws_env, "AWS_ENDPOINT_URL_EC2": url})
        began = time.monotonic()
        create(custom, namespace, training_run("patient", nodes=1))
        running_gang(core, namespace, "patient", 1, n=1)
        st = wait_status(
            custom,
            namespace,
            "patient",
            "the run Running, priced from the table",
            lambda s: s.get("phase") == "Running" and bool(condition(s, "PricingAvailable")),
        )
        assert time.monotonic() - began < 20  # the first fetch alone takes 40 s
        pricing = condition(st, "PricingAvailable")
        assert (pricing["status"], pricing["reason"]) == ("False", "EndpointUnreachable")
        assert "DescribeSpotPriceHistory in us-east-1: no answer after 2s yet" in pricing["message"]
        assert f"{P4D} spot estimated 35% x $32.77/h = $11.47/h" in pricing["message"]
        # Still asking AWS, and still acting at once.
        asked = time.monotonic()
        patch_spec(custom, namespace, "patient", {"suspend": True})
        wait_status(
            custom,
            namespace,
            "patient",
            "the run Suspended",
            lambda s: s.get("phase") == "Suspended",
            timeout=15,
        )
        assert time.monotonic() - began < 40, "the test must end while the fetch still hangs"
        assert time.monotonic() - asked < 10
