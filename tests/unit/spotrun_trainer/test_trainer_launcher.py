"""Launcher mode: the exit code of a torchrun gang, and the torchrun command."""

from __future__ import annotations

import pytest

from spotrun_api import contract
from spotrun_api import contract as contract_api
from spotrun_trainer import launch
from spotrun_trainer.launcher import decide_exit, torchrun_command


def test_launcher_exit_mapping() -> None:
    assert decide_exit(0, [0, 0], 2) == contract.EXIT_DONE
    assert decide_exit(1, [143, 143], 2) == contract.EXIT_STOPPED  # torchrun's own rc is 1
    # A worker saw its peer vanish; torchrun stopped the other, which reported nothing.
    assert decide_exit(1, [contract_api.EXIT_PEER_LOST], 2) == contract_api.EXIT_PEER_LOST
    assert decide_exit(1, [contract_api.EXIT_PEER_LOST, 143], 2) == contract_api.EXIT_PEER_LOST
    # Any worker's own error still fails the pod.
    assert decide_exit(1, [contract_api.EXIT_PEER_LOST, 1], 2) == 1
    assert decide_exit(1, [143, 0], 2) == contract.EXIT_STOPPED
    assert decide_exit(1, [143], 2) == 1  # a worker died without reporting
    assert decide_exit(1, [143, 1], 2) == 1
    assert decide_exit(0, [], 2) == 1
    cmd = torchrun_command(["--max-steps", "3"], 8, 110.0, {}, module="spotrun_lm")
    assert "--nproc-per-node=8" in cmd and "--shutdown-timeout=110" in cmd
    assert "--standalone" in cmd and cmd[-3:] == ["spotrun_lm", "--max-steps", "3"]
    assert "--standalone" not in torchrun_command([], 8, 110.0, {"PET_NNODES": "2"}, module="m")


def test_a_script_gang_exits_done_when_torchrun_does_and_recorded_nothing() -> None:
    # A user's script records only its stops (the integrations do, on SIGTERM: 143).
    assert decide_exit(0, [], 2, unrecorded_ok=True) == contract.EXIT_DONE
    assert decide_exit(1, [], 2, unrecorded_ok=True) == 1  # a rank failed on its own
    assert decide_exit(1, [143, 143], 2, unrecorded_ok=True) == contract.EXIT_STOPPED
    assert decide_exit(1, [143], 2, unrecorded_ok=True) == 1  # one rank died unrecorded
    fenced = contract.EXIT_FENCED
    assert decide_exit(1, [fenced, 143], 2, unrecorded_ok=True) == fenced


def test_torchrun_command_runs_a_script_or_a_module() -> None:
    cmd = torchrun_command(["--lr", "1"], 8, 60.0, {}, script="/opt/x/train.py")
    assert cmd[-3:] == ["/opt/x/train.py", "--lr", "1"] and "-m" not in cmd[-4:]
    with pytest.raises(ValueError, match="exactly one"):
        torchrun_command([], 8, 60.0, {}, module="m", script="s.py")
    with pytest.raises(ValueError, match="exactly one"):
        torchrun_command([], 8, 60.0, {})


def test_launch_reads_ranks_and_grace_from_the_contract_env() -> None:
    env = {contract.ENV_PROCS_PER_NODE: "8", contract.ENV_TERMINATION_GRACE_SECONDS: "60"}
    assert launch.ranks_per_node(None, env) == 8
    assert launch.ranks_per_node(2, env) == 2  # the flag wins
    assert launch.ranks_per_node(None, {}) == 1
    assert launch.ranks_per_node(None, {contract.ENV_PROCS_PER_NODE: "x"}) == 1
    assert launch.grace_seconds(env) == 60.0
    assert launch.grace_seconds({}) == contract.DEFAULT_TERMINATION_GRACE_SECONDS
