"""A worker waits for its master's store itself (master_wait.py): which store, the wait on
a real socket, and the exit when the master never answers."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from spotrun_api import contract
from spotrun_trainer import master_wait
from spotrun_trainer.master_wait import MasterStore


def test_a_worker_started_from_the_jobs_env_waits_for_MASTER_ADDR() -> None:
    env = {"MASTER_ADDR": "r-a2-master-0", "MASTER_PORT": "23456", "RANK": "1", "WORLD_SIZE": "2"}
    assert master_wait.rank_store(env) == MasterStore("r-a2-master-0", 23456)
    assert master_wait.rank_store({**env, "RANK": "0"}) is None  # the master serves it
    assert master_wait.rank_store({**env, "WORLD_SIZE": "1"}) is None
    # A torchrun worker joins its own agent's store, which is up before it starts.
    assert master_wait.rank_store({**env, "TORCHELASTIC_RUN_ID": "x"}) is None
    assert master_wait.rank_store({"RANK": "1", "WORLD_SIZE": "2"}) is None


def test_the_launcher_of_a_node_other_than_the_first_waits_for_PET_MASTER_ADDR() -> None:
    env = {"PET_MASTER_ADDR": "r-a2-master-0", "PET_MASTER_PORT": "29500", "PET_NODE_RANK": "3"}
    assert master_wait.launcher_store(env) == MasterStore("r-a2-master-0", 29500)
    assert master_wait.launcher_store({**env, "PET_NODE_RANK": "0"}) is None
    with pytest.raises(ValueError, match="PET_MASTER_PORT='x'"):
        master_wait.launcher_store({**env, "PET_MASTER_PORT": "x"})


def test_the_wait_ends_when_the_master_starts_listening() -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
    store = MasterStore("127.0.0.1", port)
    assert not master_wait.answers(store)  # nothing listens yet
    listening = threading.Event()
    server = socket.socket()

    def listen_later() -> None:
        listening.wait(0.5)  # starts later than the worker's first try
        server.bind(("127.0.0.1", port))
        server.listen()

    t = threading.Thread(target=listen_later)
    t.start()
    try:
        waited = master_wait.wait_for_master(store, {})
    finally:
        t.join()
        server.close()
    assert waited >= 0.4  # it polled until the master listened, not gave up


def test_a_master_that_never_answers_ends_the_worker_with_EXIT_NO_MASTER(tmp_path: Path) -> None:
    now = [0.0]
    tries: list[MasterStore] = []

    def probe(store: MasterStore) -> bool:
        tries.append(store)
        return False

    def sleep(seconds: float) -> None:
        now[0] += seconds

    message = tmp_path / "termination-log"
    env = {
        contract.ENV_MASTER_WAIT_SECONDS: "3",
        contract.ENV_TERMINATION_MESSAGE_PATH: str(message),
    }
    with pytest.raises(SystemExit) as left:
        master_wait.wait_for_master(
            MasterStore("r-a2-master-0", 23456), env, probe=probe, clock=lambda: now[0], sleep=sleep
        )
    assert left.value.code == contract.EXIT_NO_MASTER
    assert 30 <= len(tries) <= 32  # every 0.1 s for 3 s
    text = message.read_text()
    assert "r-a2-master-0:23456 did not answer in 3s" in text, text


def test_a_bad_wait_setting_names_the_variable() -> None:
    env = {contract.ENV_MASTER_WAIT_SECONDS: "soon"}
    with pytest.raises(ValueError, match=contract.ENV_MASTER_WAIT_SECONDS):
        master_wait.wait_for_master(MasterStore("m", 1), env, probe=lambda s: True)
