"""``kubectl spotrun estimate`` against moto's EC2 server on loopback: the spot prices come
through boto3 as the operator's do (aws_fakes.py, tests/unit/spotrun_operator/aws), and any
failure falls back to the table with the reason in the output."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_fakes import ErrorProxy, SpotHistory, rec

from spotrun_cli import kubectl_plugin

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = str(ROOT / "manifests/examples/quickstart.yaml")
P4D = "p4d.24xlarge"
MIN = timedelta(minutes=1)


# moto's server and the hermetic AWS environment: tests/unit/spotrun_operator/aws.
pytestmark = pytest.mark.usefixtures("aws_env")


def estimate(
    capsys: pytest.CaptureFixture[str], endpoint: str, *extra: str
) -> tuple[str, dict[str, Any]]:
    """The text output and the --json object of the quickstart, prices from ``endpoint``."""
    argv = ["estimate", "-f", QUICKSTART, "--hours", "24", "--aws-endpoint-url", endpoint, *extra]
    assert kubectl_plugin.main(argv) == 0
    text = capsys.readouterr().out
    assert kubectl_plugin.main([*argv, "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


def test_spot_prices_come_from_aws_at_the_dearest_zone(
    moto_server: tuple[str, int], spot_history: SpotHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    spot_history.records = [
        rec(P4D, "us-east-1a", "11.2000", now - 90 * MIN),  # superseded
        rec(P4D, "us-east-1a", "10.5000", now - 10 * MIN),
        rec(P4D, "us-east-1b", "12.7500", now - 20 * MIN),  # the dearest
        rec(P4D, "us-east-1c", "9.9000", now - 300 * MIN),  # in effect at the window's start
        rec(P4D, "us-east-1d", "99.0000", now - 5 * MIN, product="SUSE Linux"),
        rec(P4D, "eu-west-1a", "1.0000", now - 5 * MIN),  # another region
    ]
    host, port = moto_server
    text, obj = estimate(capsys, f"http://{host}:{port}")
    [cells] = [line.split() for line in text.splitlines() if line.startswith(P4D)]
    assert cells[2:6] == ["$12.75", "aws", "us-east-1b", "$32.77"]
    assert "Prices: spot: AWS DescribeSpotPriceHistory in us-east-1, the dearest zone" in text
    assert obj["pricing"]["source"] == "aws"
    [row] = obj["runs"][0]["rows"]
    assert (row["spotUSDPerHour"], row["spotPriceZone"], row["spotPriceZones"]) == (
        12.75, "us-east-1b", 3
    )  # fmt: skip
    hours = obj["runs"][0]["expectedHours"]
    assert row["costUSD"] == pytest.approx(hours * 2 * 12.75, abs=0.01)
    req = spot_history.requests[0]
    assert (req["InstanceTypes"], req["ProductDescriptions"], req["Region"]) == (
        [P4D], ["Linux/UNIX"], "us-east-1"
    )  # fmt: skip


def test_region_flag_asks_that_region(
    moto_server: tuple[str, int], spot_history: SpotHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    spot_history.records = [rec(P4D, "eu-west-1a", "14.0000", datetime.now(UTC) - MIN)]
    host, port = moto_server
    _, obj = estimate(capsys, f"http://{host}:{port}", "--region", "eu-west-1")
    assert obj["region"] == "eu-west-1"
    assert obj["runs"][0]["rows"][0]["spotPriceZone"] == "eu-west-1a"
    assert {r["Region"] for r in spot_history.requests} == {"eu-west-1"}


def test_access_denied_falls_back_to_the_table_and_says_so(
    moto_server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    with ErrorProxy(moto_server) as proxy:
        proxy.always = (403, "UnauthorizedOperation", "You are not authorized")
        text, obj = estimate(capsys, proxy.url)
    assert "$11.47   table-estimate" in text
    assert (
        "Prices: AWS gave no spot prices (DescribeSpotPriceHistory in us-east-1: "
        "UnauthorizedOperation (You are not authorized)): spot estimated as 35% of on-demand"
    ) in text
    assert obj["pricing"]["source"] == "table"
    assert obj["runs"][0]["rows"][0]["spotPriceSource"] == "table-estimate"


def test_unreachable_endpoint_falls_back_to_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    # A loopback port that is bound but not listening: connections are refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        text, obj = estimate(capsys, f"http://127.0.0.1:{sock.getsockname()[1]}")
    assert "table-estimate" in text
    assert (
        "EndpointConnectionError: Could not connect to the endpoint URL" in obj["pricing"]["note"]
    )
