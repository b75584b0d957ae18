"""budget.py: ok | warn | stop with numbers worked out by hand (binary-exact inputs)."""

from __future__ import annotations

import functools

import pytest

from spotrun_operator.money.budget import BudgetAction, assess, format_duration, may_resume

# $225/h: about a 2-node p4d gang at on-demand-ish prices; 0.0625 $/s is exact in binary.
BURN = 0.0625


def test_no_budget_is_always_ok() -> None:
    d = assess(
        max_usd=None, spent_usd=5000.0, burn_usd_per_second=BURN, checkpoint_interval_seconds=900
    )
    assert (d.action, d.reason, d.stop) == (BudgetAction.OK, "NoBudget", False)
    assert d.message == "no budget set; spent $5,000.00"


def test_within_budget() -> None:
    d = assess(
        max_usd=1000.0, spent_usd=500.0, burn_usd_per_second=BURN, checkpoint_interval_seconds=900
    )
    assert (d.action, d.reason, d.projected_usd) == (BudgetAction.OK, "WithinBudget", 556.25)
    assert d.message == "spent $500.00 of the $1,000.00 budget (50.0%)"
    assert (d.emit_warning, d.warned) == (False, False)


def test_warning_at_80_percent_is_emitted_once() -> None:
    first = assess(
        max_usd=1000.0, spent_usd=800.0, burn_usd_per_second=BURN, checkpoint_interval_seconds=900
    )
    assert (first.action, first.reason) == (BudgetAction.WARN, "BudgetWarning")
    assert (first.emit_warning, first.warned) == (True, True)
    # 200 left / 0.0625 $/s = 3200 s, shown to the minute.
    assert first.message == (
        "spent $800.00 of the $1,000.00 budget (80.0%); about 53m left at $225.00/h"
    )
    again = assess(
        max_usd=1000.0,
        spent_usd=810.0,
        burn_usd_per_second=BURN,
        checkpoint_interval_seconds=900,
        warned=first.warned,
    )
    assert (again.action, again.emit_warning, again.warned) == (BudgetAction.WARN, False, True)
    idle = assess(
        max_usd=1000.0, spent_usd=810.0, burn_usd_per_second=0.0, checkpoint_interval_seconds=900
    )
    assert idle.message == "spent $810.00 of the $1,000.00 budget (81.0%)"


def test_stop_when_the_next_interval_would_pass_the_budget() -> None:
    d = assess(
        max_usd=1000.0, spent_usd=950.0, burn_usd_per_second=BURN, checkpoint_interval_seconds=900
    )
    assert (d.action, d.reason, d.stop) == (BudgetAction.STOP, "BudgetExceeded", True)
    assert d.projected_usd == 1006.25  # 950 + 0.0625 x 900
    assert d.message == (
        "spent $950.00 of the $1,000.00 budget (95.0%); at $225.00/h the next 15m would bring "
        "it to $1,006.25: stopping now with a checkpoint; raise spec.budget.maxUSD to resume"
    )


def test_landing_exactly_on_the_budget_is_not_a_stop() -> None:
    d = assess(
        max_usd=1000.0, spent_usd=943.75, burn_usd_per_second=BURN, checkpoint_interval_seconds=900
    )
    assert (d.projected_usd, d.action) == (1000.0, BudgetAction.WARN)


def test_grace_period_extends_the_horizon() -> None:
    at_940 = functools.partial(
        assess,
        max_usd=1000.0,
        spent_usd=940.0,
        burn_usd_per_second=BURN,
        checkpoint_interval_seconds=900.0,
    )
    assert at_940().projected_usd == 996.25
    assert at_940().action is BudgetAction.WARN
    with_grace = at_940(grace_seconds=110.0)
    assert with_grace.projected_usd == 1003.125  # 940 + 0.0625 x 1010
    assert with_grace.stop
    assert "the next 1010s would bring it to $1,003.13" in with_grace.message


def test_spent_budget_stops_even_when_idle() -> None:
    d = assess(
        max_usd=1000.0, spent_usd=1000.0, burn_usd_per_second=0.0, checkpoint_interval_seconds=900
    )
    assert d.stop
    assert d.message == (
        "spent $1,000.00 of the $1,000.00 budget (100.0%): stopping the run; raise "
        "spec.budget.maxUSD to resume"
    )


def test_resume_only_when_the_raised_budget_has_room_for_an_interval() -> None:
    resume = functools.partial(
        may_resume,
        spent_usd=1000.5,
        next_burn_usd_per_second=0.125,
        checkpoint_interval_seconds=900.0,
    )
    still = resume(max_usd=1100.0)  # 1000.5 + 0.125 x 900 = 1113
    assert still.stop
    assert still.message == (
        "spent $1,000.50 of the $1,100.00 budget (91.0%); the next attempt burns $450.00/h, "
        "so resuming for one 15m interval needs spec.budget.maxUSD above $1,113.00"
    )
    raised = resume(max_usd=1200.0)
    assert (raised.action, raised.emit_warning) == (BudgetAction.WARN, False)
    plenty = resume(max_usd=5000.0)
    assert (plenty.action, plenty.warned) == (BudgetAction.OK, False)  # warning re-arms


def test_format_duration_and_validation() -> None:
    assert [format_duration(s) for s in (90, 900, 3600, 5400, 0)] == [
        "90s",
        "15m",
        "1h",
        "1h30m",
        "0s",
    ]
    with pytest.raises(ValueError, match="spent_usd"):
        assess(
            max_usd=10.0, spent_usd=-1.0, burn_usd_per_second=0.0, checkpoint_interval_seconds=900
        )
    with pytest.raises(ValueError, match="max_usd"):
        assess(max_usd=0.0, spent_usd=0.0, burn_usd_per_second=0.0, checkpoint_interval_seconds=900)
    with pytest.raises(ValueError, match="burn_usd_per_second"):
        assess(
            max_usd=10.0,
            spent_usd=0.0,
            burn_usd_per_second=float("nan"),
            checkpoint_interval_seconds=900,
        )
