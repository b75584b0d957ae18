"""A peer SIGKILLed mid-training (its node gone, say): the survivor leaves with
EXIT_PEER_LOST within seconds, not after the process group's timeout, and its termination
message names the lost rank. Two real trainer processes, one per "pod" (env rendezvous
over gloo, as a PyTorchJob with one process per pod starts them), so the survivor is not
stopped by a torchrun that saw its sibling die."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from trainer_helpers import COMMON_ARGS, PYTHON, Trainer

from spotrun_api import contract
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP

PAUSE_STEP = 3
# Generous: the survivor needs the peer timeout (2 s) or the confirm window (5 s) after the
# kill; the rest is a busy 2-core box.
EXIT_DEADLINE = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rank_cmd(ckpt: Path) -> list[str]:
    # Far more steps than the test waits for: the run never finishes on its own.
    return [PYTHON, "-m", "spotrun_lm", *COMMON_ARGS, "--model.kind", "contrastive",
            "--checkpoint.dir", str(ckpt), "--max-steps", "100000",
            "--checkpoint.interval-steps", "50"]  # fmt: skip


@pytest.mark.parametrize(
    ("victim", "paused", "peer_timeout", "lost", "how"),
    [
        # Training: the next collective fails at once (gloo: connection reset) and the
        # heartbeat confirms the peer is gone within its confirm window; the peer timeout
        # is far away, so only that path can end the survivor in time.
        (1, False, "600", "rank 1 ", "after a failed collective ("),
        # Held still outside any collective (a test hook): only the silence limit tells.
        (1, True, "2", "rank 1 ", "(limit 2.0s)"),
        # Rank 0 hosts the TCPStore: with it the store goes, which names rank 0's node.
        (0, False, "600", "rank 0's node (the c10d store at 127.0.0.1:", "answered nothing"),
    ],
    ids=["in-a-collective", "between-steps", "store-host"],
)
def test_survivor_of_a_sigkilled_peer_exits_peer_lost_naming_it(
    victim: int,
    paused: bool,
    peer_timeout: str,
    lost: str,
    how: str,
    launch: Callable[..., Trainer],
    tmp_path: Path,
) -> None:
    port = _free_port()
    messages = {r: tmp_path / f"termination-log-{r}" for r in (0, 1)}
    ranks = []
    for r in (0, 1):
        env = {
            "RANK": str(r),
            "LOCAL_RANK": "0",  # one process per pod: no launcher, no torchrun
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            contract.ENV_PEER_TIMEOUT_SECONDS: peer_timeout,
            contract.ENV_TERMINATION_MESSAGE_PATH: str(messages[r]),
        }
        if paused or r == victim:
            env[ENV_PAUSE_AT_STEP] = str(PAUSE_STEP)
        ranks.append(launch(_rank_cmd(tmp_path / "ckpt"), f"rank{r}", env))
    alive = 1 - victim
    # Between steps both ranks hold. In a collective only the victim holds, after its step,
    # so the survivor can go no further than that step boundary's agreement (a gloo
    # all_reduce) and waits in it when the victim dies. Without the victim's hold the kill
    # could find the survivor at a store rendezvous (PeerMonitor.arrive, before a barrier
    # or broadcast), which only the heartbeat's silence limit ends: 600 s here.
    ranks[victim].wait_event("paused", victim, PAUSE_STEP)
    ranks[alive].wait_event("paused" if paused else "step", alive, PAUSE_STEP)
    ranks[victim].proc.send_signal(signal.SIGKILL)
    assert ranks[victim].wait(EXIT_DEADLINE) == -signal.SIGKILL

    code = ranks[alive].wait(EXIT_DEADLINE)
    out = ranks[alive].output()
    assert code == contract.EXIT_PEER_LOST, out[-4000:]
    assert f"peer lost: {lost}" in out
    message = messages[alive].read_text()
    assert message.startswith(f"peer lost: {lost}") and message.count("\n") == 1, message
    assert f"rank {alive} exits {contract.EXIT_PEER_LOST}" in message and how in message
    assert not messages[victim].exists()


def _loop_cmd(ckpt: Path) -> list[str]:
    """The plain-loop integration (a user's own loop and process group), never finishing
    while the test waits."""
    script = Path(__file__).resolve().parents[3] / "examples" / "plain_loop" / "train.py"
    return [PYTHON, str(script), "--checkpoint-dir", str(ckpt), "--max-steps", "100000",
            "--save-steps", "50"]  # fmt: skip


@pytest.mark.parametrize(
    ("paused", "peer_timeout", "how"),
    [(False, "600", "after a failed collective ("), (True, "2", "(limit 2.0s)")],
    ids=["in-a-collective", "between-steps"],
)
def test_a_users_loop_survivor_of_a_sigkilled_peer_exits_peer_lost(
    paused: bool, peer_timeout: str, how: str, launch: Callable[..., Trainer], tmp_path: Path
) -> None:
    """The integrations' process group is the user's: spotrun's core heartbeats over its
    store all the same, so the survivor of rank 1 leaves with EXIT_PEER_LOST in seconds."""
    port = _free_port()
    message = tmp_path / "termination-log-0"
    ranks = []
    for r in (0, 1):
        env = {
            "RANK": str(r), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            contract.ENV_PEER_TIMEOUT_SECONDS: peer_timeout,
            contract.ENV_TERMINATION_MESSAGE_PATH: str(message if r == 0 else tmp_path / "t1"),
        }  # fmt: skip
        if paused:
            env[ENV_PAUSE_AT_STEP] = str(PAUSE_STEP)
        ranks.append(launch(_loop_cmd(tmp_path / "ckpt"), f"rank{r}", env))
    ranks[1].wait_event("paused" if paused else "step", 1, PAUSE_STEP)
    if paused:
        ranks[0].wait_event("paused", 0, PAUSE_STEP)
    ranks[1].proc.send_signal(signal.SIGKILL)
    assert ranks[1].wait(EXIT_DEADLINE) == -signal.SIGKILL
    code = ranks[0].wait(EXIT_DEADLINE)
    assert code == contract.EXIT_PEER_LOST, ranks[0].output()[-4000:]
    said = message.read_text()
    assert said.startswith("peer lost: rank 1 ") and how in said, said
