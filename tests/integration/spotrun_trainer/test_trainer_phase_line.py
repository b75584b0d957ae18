"""A resumed run says where its start-up went: rank 0 prints the restart-phase line once,
with every phase non-negative and the phase ends in order on the wall clock, under
torchrun and under spotrun's launcher (whose start the workers count from)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from trainer_helpers import Trainer, launcher_cmd, torchrun_cmd

from spotrun_api import contract
from spotrun_trainer.phases import LINE_PREFIX, PHASES, RestartPhases, parse_lines

CLOCK_SLACK = 1.0  # the process start has clock-tick precision; wall clocks, not durations


def _run(
    launch: Callable[..., Trainer], cmd: list[str], name: str, env: dict[str, str] | None = None
) -> tuple[RestartPhases, float, float]:
    """Run to the end; its one phase line (asserted to be rank 0's), launch and end time."""
    launched = time.time()
    t = launch(cmd, name, env)
    assert t.wait() == contract.EXIT_DONE, t.output()[-4000:]
    finished = time.time()
    out = t.output()
    lines = [line for line in out.splitlines() if LINE_PREFIX in line]
    assert len(lines) == 1, f"expected one phase line, got {lines}\n{out[-3000:]}"
    assert " rank0 " in lines[0], lines[0]
    found = parse_lines(out)
    assert len(found) == 1, lines[0]
    return found[0], launched, finished


def _assert_ordered(p: RestartPhases, launched: float, finished: float) -> None:
    assert all(p.seconds[n] >= 0 for n in PHASES), p
    ends = [p.ends()[n] for n in PHASES]
    assert ends == sorted(ends)
    assert launched - CLOCK_SLACK <= p.t0 <= ends[0]
    assert ends[-1] <= finished + CLOCK_SLACK


@pytest.mark.parametrize("how", ["torchrun", "launcher"])
def test_a_resumed_run_prints_its_phases_once_on_rank_0(
    how: str, launch: Callable[..., Trainer], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    command = torchrun_cmd if how == "torchrun" else launcher_cmd
    fresh, launched, finished = _run(launch, command(ckpt, "--max-steps", "4"), "fresh")
    assert fresh.resumed_from is None and fresh.attempt is None
    _assert_ordered(fresh, launched, finished)

    env = {contract.ENV_ATTEMPT: "2"}
    resumed, launched, finished = _run(launch, command(ckpt, "--max-steps", "6"), "resumed", env)
    assert resumed.resumed_from == 4 and resumed.attempt == 2
    _assert_ordered(resumed, launched, finished)
