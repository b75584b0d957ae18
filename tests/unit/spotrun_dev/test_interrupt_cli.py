"""The `spotrun-dev interrupt` command line and the writes the real-node path makes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from spotrun_dev import cli, inject, plans, real_interrupt, trace_match

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "signals"


def _interrupt_args(*argv: str) -> argparse.Namespace:
    return cli.parse_args(["interrupt", "spot-p4d-3", *argv])


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


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any cluster access fails the test: the checks must come before it."""

    def touched(*_: object, **__: object) -> None:
        raise AssertionError("the command reached the cluster")

    monkeypatch.setattr(cli, "_core", touched)
    monkeypatch.setattr(real_interrupt, "interrupt_real", touched)
    monkeypatch.setattr(inject, "interrupt", touched)


def _exit_of(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(["interrupt", "real-spot-1", *argv])
    return int(str(exc.value.code)), capsys.readouterr().err


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize("signal", ["karpenter", "rebalance", "gke-preempt", "out-of-service"])
def test_real_node_refuses_a_signal_it_cannot_do(
    capsys: pytest.CaptureFixture[str], signal: str
) -> None:
    code, err = _exit_of(capsys, "--signal", signal)
    assert code == 2
    assert "usage: spotrun-dev interrupt" in err
    assert f"argument --signal: {signal!r}" in err
    assert "choose from nth, loss, shutdown" in err


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize(
    "option",
    [
        ["--mode", "queue"],
        ["--instance-dies-after", "30"],
        ["--instance-dies-after", "0"],
        ["--termination-grace-period", "60"],
        ["--keep-node"],
    ],
)
def test_real_node_refuses_kwok_only_options(
    capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    code, err = _exit_of(capsys, "--signal", "nth", *option)
    assert code == 2
    assert f"argument {option[0]}: " in err and "real node" in err


def test_real_node_accepts_what_it_does() -> None:
    """IMDS mode and the real node lifecycle controller are what a real node always does."""
    for argv in (
        ["--signal", "loss"],
        ["--signal", "shutdown", "--real-node-lifecycle"],
        ["--signal", "nth", "--mode", "imds"],
    ):
        args = cli.parse_args(["interrupt", "real-spot-2", *argv])
        assert args.node == "real-spot-2"


def test_kwok_nodes_keep_every_signal_and_option() -> None:
    args = _interrupt_args(
        *("--signal", "karpenter", "--keep-node"),
        *("--termination-grace-period", "60", "--instance-dies-after", "5"),
    )
    assert (args.signal, args.keep_node, args.termination_grace_period) == ("karpenter", True, 60)
