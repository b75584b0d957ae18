"""A worker joins its gang: wait until the master's store accepts a connection.

A PyTorchJob's Worker pods start with its Master. The training operator can add an init
container (``init-pytorch``) that holds each worker until the master's DNS name resolves,
which happens only once the master pod runs: the worker then starts its own process, and
its seconds of imports, after the master's. spotrun's template has no such container
(manifests/eks/pytorch-init-container.yaml): the worker imports while the master starts,
and waits here, just before it joins the process group, polling every 0.1 s. torch's own
connect retries back off (0.5 s, 1 s, 2.5 s, ... between tries): a master a moment late
would cost seconds.

A master that never answers (its pod found no node) ends the worker with
``EXIT_NO_MASTER`` after ``SPOTRUN_MASTER_WAIT_SECONDS``, as ``init-pytorch`` fails after its
tries: the operator reads either as a gang that could not be placed (docs/signals.md).

Which store: ``MASTER_ADDR:MASTER_PORT`` for a rank the PyTorchJob's env starts directly,
``PET_MASTER_ADDR:PET_MASTER_PORT`` for spotrun's launcher before it starts torchrun on a
node other than the first; a torchrun worker joins its own agent's store and waits for
nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spotrun_api import contract
from spotrun_trainer.pod_io import seconds_from_env, write_termination_message

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
CONNECT_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class MasterStore:
    host: str
    port: int


def _store(env: Mapping[str, str], addr: str, port: str, rank: str) -> MasterStore | None:
    host, raw_port = env.get(addr, "").strip(), env.get(port, "").strip()
    if not host or not raw_port or env.get(rank, "0").strip() in ("", "0"):
        return None
    try:
        return MasterStore(host, int(raw_port))
    except ValueError:
        raise ValueError(f"{port}={raw_port!r}: not a port number") from None


def rank_store(env: Mapping[str, str] = os.environ) -> MasterStore | None:
    """The store a rank started directly from the PyTorchJob's env joins (None: rank 0,
    which serves it; a torchrun worker, whose agent's store is already up; no env)."""
    if "TORCHELASTIC_RUN_ID" in env or int(env.get("WORLD_SIZE", "1") or "1") <= 1:
        return None
    return _store(env, "MASTER_ADDR", "MASTER_PORT", "RANK")


def launcher_store(env: Mapping[str, str] = os.environ) -> MasterStore | None:
    """The store torchrun's agent on a node other than the first joins (None elsewhere)."""
    return _store(env, "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NODE_RANK")


def answers(store: MasterStore) -> bool:
    """The store's address resolves and it accepts a TCP connection (closed at once: the
    store serves each client that validates itself and drops one that does not)."""
    try:
        with socket.create_connection((store.host, store.port), CONNECT_TIMEOUT_SECONDS):
            return True
    except OSError:  # the name does not resolve yet, nothing listens yet, or unreachable
        return False


def wait_for_master(
    store: MasterStore,
    env: Mapping[str, str] = os.environ,
    *,
    probe: Callable[[MasterStore], bool] = answers,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Block until ``store`` answers; the seconds waited. After the wait allowed, write the
    termination message and raise ``SystemExit(EXIT_NO_MASTER)``."""
    limit = seconds_from_env(
        env, contract.ENV_MASTER_WAIT_SECONDS, contract.DEFAULT_MASTER_WAIT_SECONDS, False
    )
    start = clock()
    tries = 0
    while True:
        tries += 1
        if probe(store):
            waited = clock() - start
            if tries > 1:
                log.info("master %s:%d answered after %.1fs", store.host, store.port, waited)
            return waited
        if tries == 1:
            log.info("waiting for the master %s:%d (up to %.0fs)", store.host, store.port, limit)
        if clock() - start >= limit:
            break
        sleep(POLL_SECONDS)
    text = (
        f"the master {store.host}:{store.port} did not answer in {limit:.0f}s "
        f"({contract.ENV_MASTER_WAIT_SECONDS}): the gang was never complete"
    )
    log.error("%s", text)
    write_termination_message(text, env)
    raise SystemExit(contract.EXIT_NO_MASTER)
