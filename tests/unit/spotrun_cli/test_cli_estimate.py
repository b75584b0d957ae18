"""``kubectl spotrun estimate``: the model (interruptions, lost time, costs, budget), its text
and JSON, the manifest checks, and the price lookup's fallbacks (no AWS here)."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrun_api.prices import SpotPrice
from spotrun_api.spec import TrainingRunSpec
from spotrun_cli import estimate_plan as plan
from spotrun_cli import estimate_view, kubeapi, kubectl_plugin, spot_prices
from spotrun_cli.estimate_plan import Assumptions, SpotQuote

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "manifests/examples/quickstart.yaml"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def spec(**fields: Any) -> TrainingRunSpec:
    base: dict[str, Any] = {
        "image": "trainer",
        "nodes": 2,
        "capacity": {"instanceTypes": ["p4d.24xlarge"]},
        "checkpoint": {"volume": {"claimName": "ckpt"}, "interval": "1h"},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainingRunSpec.model_validate(base)


def test_interruptions_and_lost_time_stretch_the_run() -> None:
    # Gang rate 2 x 0.25 = 0.5/h; each interruption costs 30 min recovery + 30 min of work
    # (half the 1h interval) = 1h: T = 10 / (1 - 0.5 x 1) = 20h, 0.5 x 20 = 10 interruptions.
    s = plan.schedule(spec(), Assumptions(10.0, 0.25, recovery_seconds=1800.0))
    assert s.interval_seconds == 3600.0
    assert s.lost_seconds_per_interruption == 3600.0
    assert s.expected_hours == pytest.approx(20.0)
    assert s.expected_interruptions == pytest.approx(10.0)


def test_a_gang_interrupted_faster_than_it_recovers_never_finishes() -> None:
    s = plan.schedule(spec(), Assumptions(10.0, 0.5, recovery_seconds=1800.0))  # drag 1.0
    assert (s.expected_hours, s.expected_interruptions) == (None, None)
    quotes = {"p4d.24xlarge": SpotQuote(10.0, "table-estimate")}
    [r] = plan.estimate(
        spec(budget={"maxUSD": 100}), Assumptions(10.0, 0.5, 1800.0), quotes, {}
    ).rows
    assert r.cost_usd is None and r.saving_usd is None
    assert r.budget_reached_at_hour == pytest.approx(5.0)  # spent before it could finish


def test_recovery_is_the_measured_figure_with_the_runs_own_grace_period() -> None:
    a = Assumptions(1.0, 0.0)
    assert plan.recovery_seconds(spec(), a) == 144.0 - 60.0 + 110.0  # the CRD's default grace
    assert plan.recovery_seconds(spec(terminationGracePeriodSeconds=60), a) == 144.0
    assert plan.recovery_seconds(spec(), Assumptions(1.0, 0.0, recovery_seconds=0.0)) == 0.0


def test_auto_interval_is_the_operators_young_daly() -> None:
    # One node at 0.5/h: MTBF 7200 s, checkpoint cost 60 s -> sqrt(2 x 60 x 7200) = 929 s.
    auto = {"interval": "auto"}
    a = Assumptions(1.0, 0.5)
    assert plan.checkpoint_interval_seconds(spec(nodes=1, checkpoint=auto), a) == 929.0
    # Nothing interrupts (rate 0, or on-demand nodes): the operator has no MTBF -> 15m.
    assert plan.checkpoint_interval_seconds(spec(checkpoint=auto), Assumptions(1.0, 0.0)) == 900
    on_demand = spec(checkpoint=auto, capacity={"type": "on-demand"})
    assert plan.checkpoint_interval_seconds(on_demand, a) == 900.0


def test_costs_saving_and_budget_per_instance_type() -> None:
    s = spec(capacity={"instanceTypes": ["p4d.24xlarge", "g5.xlarge"]}, budget={"maxUSD": 100})
    quotes = {"p4d.24xlarge": SpotQuote(10.0, "aws", "us-east-1a", 3)}
    e = plan.estimate(s, Assumptions(10.0, 0.25, 1800.0), quotes, {"p4d.24xlarge": 30.0})
    p4d, g5 = e.rows
    assert e.schedule.expected_hours == pytest.approx(20.0)
    assert p4d.cost_usd == pytest.approx(20 * 2 * 10.0)  # expected hours at spot
    assert p4d.on_demand_cost_usd == pytest.approx(10 * 2 * 30.0)  # H hours on-demand
    assert p4d.saving_usd == pytest.approx(200.0)
    assert p4d.saving_percent == 33.3
    assert p4d.budget_reached_at_hour == pytest.approx(5.0)  # $100 at $20/h
    assert (g5.spot.source, g5.cost_usd, g5.on_demand_cost_usd) == ("unknown", None, None)
    assert g5.budget_reached_at_hour is None
    roomy = plan.estimate(
        spec(budget={"maxUSD": 10_000}), Assumptions(10.0, 0.0), quotes, {"p4d.24xlarge": 30.0}
    )
    assert roomy.rows[0].budget_reached_at_hour is None


def test_on_demand_capacity_has_no_interruptions_and_no_saving() -> None:
    s = spec(capacity={"type": "on-demand"})
    e = plan.estimate(s, Assumptions(10.0, 5.0), {}, {"p4d.24xlarge": 30.0})
    assert (e.schedule.expected_interruptions, e.schedule.expected_hours) == (0.0, 10.0)
    [r] = e.rows
    assert r.cost_usd == r.on_demand_cost_usd == pytest.approx(600.0)
    assert (r.saving_usd, r.saving_percent) == (0.0, 0.0)


def test_quote_is_the_dearest_zone_else_the_table() -> None:
    zones = {
        "a": SpotPrice("p4d.24xlarge", "a", 11.0, T0),
        "b": SpotPrice("p4d.24xlarge", "b", 12.5, T0),
        "c": SpotPrice("p4d.24xlarge", "c", 9.0, T0),
    }
    assert plan.quote(zones, 32.77, 0.35) == SpotQuote(12.5, "aws", "b", 3)
    assert plan.quote({}, 10.0, 0.35) == SpotQuote(3.5, "table-estimate")
    assert plan.quote({}, None, 0.35) == SpotQuote(None, "unknown")


def test_default_rate_is_the_advisors_top_band() -> None:
    rate = plan.DEFAULT_INTERRUPTIONS_PER_NODE_HOUR
    assert 1 - math.exp(-rate * 730) == pytest.approx(0.20)  # 20% of nodes hit in a month
    assert rate == pytest.approx(0.000306, abs=1e-6)


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"hours": 0}, "--hours"), ({"hours": math.inf}, "--hours"),
     ({"interruptions_per_node_hour": -1}, "--interruptions-per-node-hour"),
     ({"recovery_seconds": -5}, "--recovery-seconds")],
)  # fmt: skip
def test_bad_assumptions_name_the_option(kw: dict[str, float], field: str) -> None:
    args: dict[str, Any] = {"hours": 1.0, **kw}
    with pytest.raises(ValueError, match=field):
        Assumptions(**args)


def test_text_and_json_carry_the_same_figures() -> None:
    s = spec(budget={"maxUSD": 100})
    quotes = {"p4d.24xlarge": SpotQuote(10.0, "aws", "us-east-1c", 3)}
    e = plan.estimate(
        s, Assumptions(10.0, 0.25, 1800.0), quotes, {"p4d.24xlarge": 30.0}, name="r", namespace="ml"
    )
    text = estimate_view.render([e], prices_note="NOTE", rate_note="RATE")
    assert (
        "TrainingRun ml/r: 2 node(s) x 8 GPUs on spot, checkpoint every 1h, budget $100.00" in text
    )
    assert "10.00 expected at 0.25 per node-hour (RATE)" in text
    assert "each costs         1h00m: 30m00s to recover + 30m00s of work" in text
    assert "expected time      20.0h" in text
    [row] = [line.split() for line in text.splitlines() if line.startswith("p4d.24xlarge")]
    assert row == ["p4d.24xlarge", "2", "$10.00", "aws", "us-east-1c", "$30.00", "$400.00",
                   "$600.00", "$200.00", "(33%)", "reached", "at", "5.0h"]  # fmt: skip
    assert text.endswith("Prices: NOTE\n")
    obj = estimate_view.to_json([e], region="us-east-1", prices_note="NOTE", pricing_source="aws")
    [run] = obj["runs"]
    assert (run["expectedHours"], run["expectedInterruptions"], run["finishes"]) == (
        20.0,
        10.0,
        True,
    )
    assert run["rows"][0] == {
        "instanceType": "p4d.24xlarge", "nodes": 2, "spotUSDPerHour": 10.0,
        "spotPriceSource": "aws", "spotPriceZone": "us-east-1c", "spotPriceZones": 3,
        "onDemandUSDPerHour": 30.0, "costUSD": 400.0, "onDemandCostUSD": 600.0,
        "savingUSD": 200.0, "savingPercent": 33.3, "budgetReached": True,
        "budgetReachedAtHour": 5.0,
    }  # fmt: skip


def test_a_loss_against_on_demand_prints_as_a_negative_saving() -> None:
    quotes = {"p4d.24xlarge": SpotQuote(10.5, "table-estimate")}
    e = plan.estimate(spec(), Assumptions(10.0, 0.4, 1800.0), quotes, {"p4d.24xlarge": 30.0})
    text = estimate_view.render([e], prices_note="n", rate_note="r")
    # T = 10 / (1 - 0.8) = 50h at $10.50/h x 2 = $1,050 against $600 on-demand.
    assert "-$450.00 (-75%)" in text


def plugin(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = kubectl_plugin.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_quickstart_manifest_needs_no_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_cluster(*_: object) -> None:
        raise AssertionError("estimate must not talk to the cluster")

    monkeypatch.setattr(kubeapi, "api_client", no_cluster)
    monkeypatch.setattr(kubeapi, "default_namespace", no_cluster)
    argv = ["estimate", "-f", str(QUICKSTART), "--hours", "24", "--pricing", "table"]
    rc, out, err = plugin(argv, capsys)
    assert (rc, err) == (0, "")
    assert out.startswith("TrainingRun default/quickstart: 2 node(s) x 8 GPUs on spot, "
                          "checkpoint every 15m, budget $200.00\n")  # fmt: skip
    assert "each costs         10m44s: 3m14s to recover + 7m30s of work" in out
    assert "$11.47   table-estimate" in out  # 35% of $32.77
    assert "reached at 8.7h" in out  # $200 at 2 x $11.47/h
    assert "Prices: --pricing table: spot estimated as 35% of on-demand" in out
    rc, out, _ = plugin([*argv, "--json", "--interruptions-per-node-hour", "0.1"], capsys)
    run = json.loads(out)["runs"][0]
    assert (run["name"], run["namespace"], run["interruptionsPerNodeHour"]) == (
        "quickstart", "default", 0.1
    )  # fmt: skip
    # 0.2/h x 644 s: T = 24 / (1 - 0.2 x 644 / 3600)
    assert run["expectedHours"] == pytest.approx(24 / (1 - 0.2 * 644 / 3600), abs=1e-4)


def test_help_names_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        kubectl_plugin.main(["estimate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert "default 0.000306: AWS Spot Instance Advisor's highest band, >20% of instances" in out
    assert "84 s + the run's terminationGracePeriodSeconds" in out
    assert "table: 35% of the on-demand table" in out


def write(tmp_path: Path, docs: list[Any]) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def training_run(**spec_fields: Any) -> dict[str, Any]:
    doc = yaml.safe_load_all(QUICKSTART.read_text())
    run = next(d for d in doc if d["kind"] == "TrainingRun")
    run["spec"].update(spec_fields)
    return dict(run)


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        (None, "missing.yaml: No such file or directory"),
        ([{"apiVersion": "v1", "kind": "ConfigMap"}], "no TrainingRun (spotrun.dev/v1alpha1) "
         "in it (found: ConfigMap)"),
        ([training_run(nodes=0)], "TrainingRun quickstart: spec.nodes: Input should be greater"),
        ([training_run(checkpoint={"interval": "15m"})], "spec.checkpoint.volume: Field required"),
        ([training_run(capacity={"instanceTypes": []})], "spec.capacity.instanceTypes: List "
         "should have at least 1 item"),
        ([{**training_run(), "apiVersion": "spotrun.dev/v1"}], "apiVersion: must be "
         "spotrun.dev/v1alpha1, got 'spotrun.dev/v1'"),
        ([{k: v for k, v in training_run().items() if k != "spec"}], "spec: required"),
        (["just a string"], "document 1 is not a Kubernetes object"),
    ],
)  # fmt: skip
def test_bad_manifests_name_the_field(
    docs: list[Any] | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "missing.yaml") if docs is None else write(tmp_path, docs)
    rc, out, err = plugin(["estimate", "-f", path, "--hours", "1", "--pricing", "table"], capsys)
    assert (rc, out) == (1, "")
    assert err.startswith("Error: ") and message in err, err


def test_manifest_from_stdin_and_bad_hours(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", QUICKSTART.open())
    rc, out, _ = plugin(["estimate", "-f", "-", "--hours", "2", "--pricing", "table"], capsys)
    assert rc == 0 and "quickstart" in out
    rc, _, err = plugin(["estimate", "-f", str(QUICKSTART), "--hours", "-3"], capsys)
    assert rc == 1 and "--hours must be a number > 0, got -3" in err


class FakeEC2:
    """Just enough of boto3's EC2 client for fetch_spot_price_history."""

    def __init__(self, records: list[dict[str, Any]] | None, error: Exception | None = None):
        self.records, self.error = records or [], error

    def get_paginator(self, name: str) -> FakeEC2:
        assert name == "describe_spot_price_history"
        return self

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return [{"SpotPriceHistory": self.records}]


class AccessDenied(Exception):
    """Shaped like botocore's ClientError."""

    def __init__(self) -> None:
        super().__init__("denied")
        self.response = {"Error": {"Code": "UnauthorizedOperation", "Message": "not allowed"}}


def test_lookup_prefers_aws_and_says_why_it_fell_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def rec(zone: str, price: str) -> dict[str, Any]:
        return {"InstanceType": "p4d.24xlarge", "AvailabilityZone": zone, "SpotPrice": price,
                "ProductDescription": "Linux/UNIX", "Timestamp": T0}  # fmt: skip

    client = FakeEC2([rec("us-east-1a", "11.0"), rec("us-east-1b", "12.5")])
    monkeypatch.setattr(spot_prices, "ec2_client", lambda region, url: client)
    got = spot_prices.lookup(["p4d.24xlarge", "g5.xlarge"], region="us-east-1", now=T0)
    assert got.source == "aws"
    assert got.quotes["p4d.24xlarge"] == SpotQuote(12.5, "aws", "us-east-1b", 2)
    assert got.quotes["g5.xlarge"] == SpotQuote(1.006 * 0.35, "table-estimate")
    assert "EC2 has no Linux/UNIX spot price for g5.xlarge in us-east-1" in got.note
    client.error = AccessDenied()
    got = spot_prices.lookup(["p4d.24xlarge"], region="eu-west-1", now=T0)
    assert got.source == "table"
    assert got.quotes["p4d.24xlarge"].source == "table-estimate"
    assert "DescribeSpotPriceHistory in eu-west-1: UnauthorizedOperation (not allowed)" in got.note
    unknown = spot_prices.lookup(["p9.imaginary"], region="us-east-1", pricing="table")
    assert unknown.quotes["p9.imaginary"] == SpotQuote(None, "unknown")
    assert "no price known for p9.imaginary" in unknown.note


def test_without_boto3_the_table_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    got = spot_prices.lookup(["p4d.24xlarge"], region="us-east-1")
    assert got.source == "table"
    assert "boto3 is not installed" in got.note


def test_region_comes_from_the_flag_then_the_environment() -> None:
    assert spot_prices.resolve_region("eu-west-1", {"AWS_REGION": "x"}) == "eu-west-1"
    assert spot_prices.resolve_region(None, {"AWS_REGION": "ap-south-1"}) == "ap-south-1"
    env = {"AWS_DEFAULT_REGION": "us-west-2", "AWS_REGION": "ap-south-1"}
    assert spot_prices.resolve_region(None, env) == "us-west-2"
    assert spot_prices.resolve_region(None, {}) == "us-east-1"
