"""The `spotrun-dev interrupt` command line and the writes the real-node path makes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from spotrun_dev import cli, inject, plans, trace_match

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "signals"


def _interrupt_args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["interrupt", "spot-p4d-3", *argv])


def test_defaults_keep_the_old_behaviour_and_the_notice_timing() -> None:
    args = _interrupt_args()
    assert args.signal == "nth"
    assert args.mode == "imds"
    # None: the instance dies when the notice runs out, not right after the drain.
    assert args.instance_dies_after is None
    assert not args.real_node_lifecycle


@pytest.mark.parametrize(
    "signal",
    [
        *("nth", "karpenter", "rebalance", "asg", "loss", "shutdown", "karpenter-drift-aborted"),
        *("mng-rebalance", "scheduled-maintenance", "state-change", "out-of-service"),
        *("ca-scale-down", "gke-preempt", "aks-evict", "node-pressure", "critical-preemption"),
    ],
)
def test_every_signal_name_is_accepted(signal: str) -> None:
    assert _interrupt_args("--signal", signal).signal == signal


def test_mode_and_timing_flags() -> None:
    args = _interrupt_args(
        "--signal", "rebalance", "--mode", "queue", "--instance-dies-after", "30"
    )
    assert (args.mode, args.instance_dies_after) == ("queue", 30.0)
    with pytest.raises(SystemExit):
        _interrupt_args("--mode", "webhook")
    with pytest.raises(SystemExit):
        _interrupt_args("--signal", "meteor")


def test_real_node_path_makes_the_nth_writes_before_the_instance_dies() -> None:
    """real_interrupt.nth_drain runs these on a real node: the fixture's NTH writes."""
    fixture = trace_match.load_fixture(FIXTURES / "nth.yaml")
    nth = [w for w in trace_match.played(fixture) if w["actor"] == "aws-node-termination-handler"]
    got = plans.render(inject.component_writes("nth"))
    assert trace_match.plan_mismatches({"writes": nth}, got) == []


def test_notice_remainder_is_the_default_death_time() -> None:
    now = time.monotonic()
    nth = inject.Run(None, "n", "nth", now, instance_dies_after=None, drain_timeout=1)
    assert 100 < nth.notice_left() <= inject.NOTICE_SECONDS["nth"]
    loss = inject.Run(None, "n", "loss", now, instance_dies_after=None, drain_timeout=1)
    assert loss.notice_left() == 0
    fixed = inject.Run(None, "n", "nth", now, instance_dies_after=5, drain_timeout=1)
    assert fixed.notice_left() <= 5
