"""``kubectl spotrun estimate`` against moto's EC2 server on loopback: the spot prices come
through boto3 as the operator's do (aws_fakes.py, tests/unit/spotrun_operator/aws), and any
failure falls back to the table with the reason in the output."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_fakes import ErrorProxy, SpotHistory, rec, serve_spot_history
from moto.server import ThreadedMotoServer

from spotrun_cli import kubectl_plugin

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = str(ROOT / "manifests/examples/quickstart.yaml")
P4D = "p4d.24xlarge"
MIN = timedelta(minutes=1)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's server in a thread on an ephemeral loopback port: (host, port)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Fake static credentials, no region, no config files, no IMDS: nothing leaks in from
    the machine, and nothing can reach real AWS."""
    for name in (
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
        "AWS_SESSION_TOKEN",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto writes timestamps without a zone, which botocore reads as local time.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def spot_history() -> Iterator[SpotHistory]:
    with serve_spot_history(SpotHistory()) as history:
        yield history


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
