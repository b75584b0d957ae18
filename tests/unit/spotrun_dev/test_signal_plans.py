"""Every spotrun-dev plan against the fixture transcribed from the real component's source.

The expected writes come from tests/fixtures/signals/*.yaml (each write cites the file and
line of the component that makes it), never from spotrun-dev's own constants.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from spotrun_dev import plans, plans_k8s, trace_match, traces

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "signals"
FIXTURE_FILES = sorted(p for p in FIXTURES.glob("*.yaml") if not p.name.startswith("_"))
NOW = dt.datetime(2026, 11, 21, 8, 0, 0, tzinfo=dt.UTC)


def _options(
    fixture: dict[str, Any], seed: str = "5f0c3a9e7b1d4c2e8a6f0b3d9c7e1a25"
) -> plans.Options:
    given = fixture.get("options") or {}
    # The fixtures carry the real timing: the node lifecycle controller waits its grace.
    return plans.Options(
        mode=given.get("mode", "imds"),
        now=NOW,
        seed=seed,
        play_node_lifecycle=False,
        termination_grace_period=given.get("termination_grace_period"),
    )


def test_every_signal_has_a_fixture() -> None:
    covered = {trace_match.load_fixture(p)["signal"] for p in FIXTURE_FILES}
    assert covered == set(traces.SIGNALS) == set(plans_k8s.SIGNALS)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_plan_matches_the_real_component(path: Path) -> None:
    fixture = trace_match.load_fixture(path)
    rendered = plans.render(plans_k8s.plan(fixture["signal"], _options(fixture)))
    assert trace_match.plan_mismatches(fixture, rendered) == []


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_every_fixture_write_cites_its_source(path: Path) -> None:
    for write in trace_match.load_fixture(path)["writes"]:
        assert len(str(write.get("source", ""))) > 20, write


@pytest.mark.parametrize("seed", ["0" * 32, "f" * 32, "0123456789abcdef0123456789abcdef"])
@pytest.mark.parametrize(
    ("signal", "mode"),
    [
        ("nth", "imds"),
        ("nth", "queue"),
        ("rebalance", "imds"),
        ("rebalance", "queue"),
        ("asg", "queue"),
    ],
)
def test_nth_taint_values_fit_a_label_value(signal: str, mode: plans.Mode, seed: str) -> None:
    """Event ids are longer than 63 characters; NTH cuts them (node.go maxTaintValueLength)."""
    value = _first_taint(plans_k8s.plan(signal, plans.Options(mode=mode, now=NOW, seed=seed)))[
        "value"
    ]
    assert len(value) == 63
    assert value.replace("-", "").isalnum()


def _first_taint(plan: list[plans.Write]) -> dict[str, Any]:
    return next(dict(c["taint_added"]) for w in plan for c in w.changes if "taint_added" in c)


def test_ids_change_with_the_event() -> None:
    one = _first_taint(plans_k8s.plan("nth", plans.Options(now=NOW, seed="a" * 32)))
    two = _first_taint(plans_k8s.plan("nth", plans.Options(now=NOW, seed="b" * 32)))
    assert one["value"] != two["value"]


def test_played_node_lifecycle_has_no_grace() -> None:
    fast = plans_k8s.plan("loss", plans.Options(play_node_lifecycle=True))
    real = plans_k8s.plan("loss", plans.Options(play_node_lifecycle=False))
    assert [w.after for w in fast][1] == plans.AFTER_PREVIOUS
    assert [w.after for w in real][1] == plans.AFTER_GRACE
    assert [w.changes for w in fast] == [w.changes for w in real]


def test_a_plan_that_merges_separate_writes_is_caught() -> None:
    """NTH's taint, label and cordon are three updates; one patch doing all is wrong."""
    fixture = trace_match.load_fixture(FIXTURES / "nth.yaml")
    rendered = plans.render(plans_k8s.plan("nth", _options(fixture)))
    taint_at = next(i for i, w in enumerate(rendered) if "taint_added" in w["changes"][0])
    label_at = next(i for i, w in enumerate(rendered) if "label_added" in w["changes"][0])
    merged = {
        **rendered[taint_at],
        "changes": rendered[taint_at]["changes"] + rendered[label_at]["changes"],
    }
    rendered[taint_at] = merged
    del rendered[label_at]
    assert trace_match.plan_mismatches(fixture, rendered)


def test_a_plan_with_a_made_up_event_id_is_caught() -> None:
    fixture = trace_match.load_fixture(FIXTURES / "nth.yaml")
    rendered = plans.render(plans_k8s.plan("nth", _options(fixture)))
    taint = next(w for w in rendered if "taint_added" in w["changes"][0])
    taint["changes"][0]["taint_added"]["value"] = "nth-0123456789ab"
    assert trace_match.plan_mismatches(fixture, rendered)


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="signal must be one of"):
        plans_k8s.plan("meteor")
