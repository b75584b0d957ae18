"""Launcher mode: the exit code of a torchrun gang, and the torchrun command."""

from __future__ import annotations

from spotrun_api import contract
from spotrun_api import contract as contract_api
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
