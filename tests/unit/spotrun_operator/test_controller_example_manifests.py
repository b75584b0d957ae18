"""manifests/examples/*.yaml through the operator's typed model (what the CRD would accept
and the operator builds from), and the GPT example's budget against the operator's own
pricing and budget rule: the local run is stopped by its budget after about 3 minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrun_api.durations import parse_duration
from spotrun_api.spec import TrainingRunSpec, parse_spec
from spotrun_operator.money import budget
from spotrun_operator.money.cost import DEFAULT_PRICES, SECONDS_PER_HOUR

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "manifests" / "examples").glob("*.yaml"))


def runs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "TrainingRun"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_run_parses(path: Path) -> None:
    found = runs(path)
    assert found, f"{path.name} holds no TrainingRun"
    for run in found:
        parse_spec(run["spec"])


def gpt_spec() -> TrainingRunSpec:
    (run,) = runs(next(p for p in EXAMPLES if p.stem == "gpt-pretrain"))
    return parse_spec(run["spec"])


def test_gpt_example_is_two_single_rank_nodes_with_bounded_retention() -> None:
    spec = gpt_spec()
    assert (spec.nodes, spec.gpus_per_node, spec.ranks_per_pod) == (2, 8, 1)
    assert spec.checkpoint.keep == 2
    assert any(a.startswith("--depth=") and 2 <= int(a.split("=")[1]) <= 4 for a in spec.args)


def test_gpt_example_budget_stops_the_local_run_after_about_three_minutes() -> None:
    spec = gpt_spec()
    (itype,) = spec.capacity.instance_types
    # The local operator prices from the table (--pricing=table): spot = 35% of list.
    burn = spec.nodes * DEFAULT_PRICES[itype].spot_usd_per_hour / SECONDS_PER_HOUR
    interval = parse_duration(spec.checkpoint.interval)
    max_usd = spec.max_usd
    assert max_usd is not None

    def stops_at(seconds: int) -> bool:
        return budget.assess(
            max_usd=max_usd,
            spent_usd=burn * seconds,
            burn_usd_per_second=burn,
            checkpoint_interval_seconds=interval,
            grace_seconds=spec.termination_grace_period_seconds,
        ).stop

    first_stop = next(s for s in range(3600) if stops_at(s))
    assert 150 <= first_stop <= 210, first_stop
    # The spend when it stops leaves room for the stop's checkpoint inside the budget.
    assert burn * (first_stop + spec.termination_grace_period_seconds) < max_usd
