"""Peer heartbeats: the survivors of a dead peer leave within seconds, with their own code.

A rank whose peer vanished (its node died, its process was SIGKILLed) would otherwise wait
in a collective until the process group's timeout (gloo's default: 30 minutes) and then
fail like an application. Instead every rank runs two daemon threads over the c10d store
its process group already has (rank 0's TCPStore, or torchrun's agent store), each through
its own clone of that store (``Store.clone``: one connection per thread, so a blocked call
never holds the process group's connection):

- the *beater* increments ``beat/<rank>`` (``Store.add``) every second and reads every
  peer's counter (``Store.multi_get``);
- the *judge* does no I/O: every second it looks at what the beater saw, on this rank's own
  monotonic clock (no clocks are compared across hosts), and ends the process with
  ``EXIT_PEER_LOST`` when a peer's counter has not moved for the limit, or the store has
  answered nothing for the limit (its host, rank 0's node, is gone). It is a thread of its
  own because a store call to a silently dead host can block for good: TCPStore waits for
  a reply with no timeout once a request is sent (measured: ``add`` on a SIGSTOPped host).

The limit is ``max(floor, PEER_TIMEOUT_STEP_FACTOR x median step time)``: the floor
(``SPOTRUN_PEER_TIMEOUT_SECONDS``) covers start-up and a thread briefly starved of the GIL
or the CPU, the step term covers steps long enough to starve it longer.

A collective that fails (gloo raises "Connection reset by peer" as soon as a peer's process
is gone) first asks :meth:`PeerMonitor.after_error`: a peer (or the store) that shows no
life for ``CONFIRM_SECONDS`` after the error ends the rank with EXIT_PEER_LOST; when every
peer beat after it, the error is the application's and goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from torch._C._distributed_c10d import PrefixStore, Store, TCPStore
from torch.distributed.distributed_c10d import _get_default_store

from spotrun_api import contract
from spotrun_trainer import testhooks
from spotrun_trainer.launcher import record_exit
from spotrun_trainer.peer_watch import LEFT, STORE_HOST_RANK, Lost, PeerWatch, StepTimes, peer_limit
from spotrun_trainer.pod_io import seconds_from_env, write_termination_message

log = logging.getLogger(__name__)

BEAT_INTERVAL_SECONDS = 1.0
# After a failed collective: how long a peer may show no life before it counts as lost.
# Short, because the error already says the gang is broken; long enough for a live peer's
# beats (one a second) to show, and for a crashed peer's own exit code to reach the
# operator first (its application error, not our EXIT_PEER_LOST, decides that attempt).
CONFIRM_SECONDS = 5.0
CHECKED_NOTE = "spotrun peers:"  # marks an error after_error has already judged

OnLost = Callable[[str], object]


def collective_timeout(env: Mapping[str, str] = os.environ) -> timedelta:
    """The process groups' timeout (``SPOTRUN_COLLECTIVE_TIMEOUT_SECONDS``)."""
    seconds = seconds_from_env(
        env,
        contract.ENV_COLLECTIVE_TIMEOUT_SECONDS,
        contract.DEFAULT_COLLECTIVE_TIMEOUT_SECONDS,
        allow_zero=False,
    )
    return timedelta(seconds=seconds)


def leave(message: str, env: Mapping[str, str] = os.environ) -> None:
    """End the process with EXIT_PEER_LOST now. ``os._exit``: the training thread may be
    blocked in a collective with the dead peer, and interpreter finalization could block
    on the same process group. A checkpoint being written is left as a ``.tmp-`` folder;
    the newest committed one stays (the commit protocol)."""
    log.error("%s", message)
    write_termination_message(message, env)
    record_exit(contract.EXIT_PEER_LOST, env)  # for launcher mode's exit code
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(contract.EXIT_PEER_LOST)


def store_address(store: Store) -> str:
    """host:port of the TCPStore under ``store``'s prefixes ("" for another store)."""
    while isinstance(store, PrefixStore):
        store = store.underlying_store
    return f"{store.host}:{store.port}" if isinstance(store, TCPStore) else ""


class PeerMonitor:
    """Heartbeats of this rank and judgement of its peers' (module docstring)."""

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        floor: float,
        *,
        interval: float = BEAT_INTERVAL_SECONDS,
        confirm: float = CONFIRM_SECONDS,
        factor: float = contract.PEER_TIMEOUT_STEP_FACTOR,
        on_lost: OnLost | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rank, self.world_size, self.floor = rank, world_size, floor
        self.interval, self.confirm, self.factor = interval, confirm, factor
        self.on_lost: OnLost = on_lost or leave
        self.clock = clock
        self.address = store_address(store)
        # One clone per thread that uses the store (Store.clone's documented purpose).
        self._beat_store = store.clone()
        self._main_store = store.clone()  # the training thread's: arrive(), stop()
        self.peers = [r for r in range(world_size) if r != rank]
        self._watch = PeerWatch(self.peers, clock())
        self._steps = StepTimes()
        self._hosts: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._declared = False
        self._arrivals = 0
        self._beater: threading.Thread | None = None

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> PeerMonitor:
        self._main_store.set(f"host/{self.rank}", socket.gethostname())  # the pod's name
        self._beater = threading.Thread(target=self._beat_loop, name="peer-beat", daemon=True)
        self._beater.start()
        threading.Thread(target=self._judge_loop, name="peer-judge", daemon=True).start()
        log.info("peer heartbeat on (%d peers, store %s): a peer silent for %.0fs or %g "
                 "median steps is lost", len(self.peers), self.address or "?", self.floor,
                 self.factor)  # fmt: skip
        return self

    def stop(self, clean: bool) -> None:
        """Stop beating and judging. ``clean``: this rank leaves with its run decided (after
        the final barrier), so peers must not count it as lost; a rank going down with an
        error says nothing and its silence makes the peers leave with EXIT_PEER_LOST."""
        self._stop.set()
        if self._beater is not None:
            # Its next add() on the key once it says "left" would make the store drop the
            # connection (the server parses the value as an integer).
            self._beater.join(2 * self.interval)
        if clean:
            # Bounded: the store's host (rank 0) may be gone already, maybe silently.
            key = f"beat/{self.rank}"
            _bounded(lambda: self._main_store.set(key, LEFT.decode()), 2 * self.interval)

    # --- what the training thread tells and asks -----------------------------------------

    def observe_step(self, seconds: float) -> None:
        with self._lock:
            self._steps.add(seconds)

    def limit(self) -> float:
        with self._lock:
            median = self._steps.median()
        return peer_limit(self.floor, median, self.factor)

    def after_error(self, error: BaseException) -> None:
        """A collective failed with ``error``: end the rank with EXIT_PEER_LOST when a peer
        (or the store) shows no life for ``confirm`` seconds after it; return when every
        peer beat after it (the error is then the application's, and goes on)."""
        notes: list[str] = list(getattr(error, "__notes__", []))
        if self._stop.is_set() or any(n.startswith(CHECKED_NOTE) for n in notes):
            return
        since = self.clock()
        # Decided within confirm + two beats (a read straddling the error moves the clock
        # of a silent peer by one interval); the bound only keeps a surprise from hanging.
        deadline = since + self.confirm + 3 * self.interval
        while not self._stop.is_set():
            now = self.clock()
            with self._lock:
                lost = self._watch.silent(now, self.confirm, since=since)
                alive = self._watch.beat_since(since)
            if lost is not None:
                self._declare(lost, f"after a failed collective ({_first_line(error)})")
                return
            if alive or now > deadline:
                break
            time.sleep(min(0.1, self.interval / 4))
        error.add_note(f"{CHECKED_NOTE} the peers kept heartbeating after this error: no peer lost")

    def arrive(self) -> None:
        """Wait, through the store, until every rank reached this point: as long as every
        peer heartbeats and with no timeout (the judge ends the process when one does not).
        The collective that follows then finds every rank there. Why: before a barrier or
        a broadcast rank 0 may work alone for long (verifying or restoring a checkpoint,
        waiting for an upload), which the process group's timeout must not cut short."""
        self._arrivals += 1
        key = f"arrive/{self._arrivals}"
        if self._main_store.add(key, 1) == self.world_size:
            self._main_store.set(f"{key}/all", "1")
        delay = 0.005
        while not self._main_store.check([f"{key}/all"]):
            time.sleep(delay)  # polled: a timed-out Store.wait logs a C++ warning each time
            delay = min(2 * delay, 0.5)

    # --- the threads -----------------------------------------------------------------------

    def _beat_loop(self) -> None:
        present, warned = False, False
        while not self._stop.is_set():
            started = self.clock()
            try:
                present = self._beat_once(present)
            except RuntimeError as e:  # torch's DistError and gloo's errors are RuntimeErrors
                if not warned:  # then the judge decides; one line is enough
                    log.warning("peer heartbeat: store %s: %s", self.address, _first_line(e))
                    warned = True
            self._stop.wait(max(0.0, self.interval - (self.clock() - started)))

    def _beat_once(self, present: bool) -> bool:
        """Beat, then read the peers' counters; whether every peer's key exists by now."""
        store, keys = self._beat_store, [f"beat/{r}" for r in self.peers]
        store.add(f"beat/{self.rank}", 1)
        present = present or store.check(keys)  # multi_get would wait for a missing key
        values: dict[int, bytes] = {}
        if present:
            values = dict(zip(self.peers, store.multi_get(keys), strict=True))
            if not self._hosts:  # each rank set its host before its first beat
                names = store.multi_get([f"host/{r}" for r in self.peers])
                hosts = [n.decode(errors="replace") for n in names]
                self._hosts = dict(zip(self.peers, hosts, strict=True))
        with self._lock:
            self._watch.saw(values, self.clock())
        return present

    def _judge_loop(self) -> None:
        while not self._stop.wait(self.interval):
            if testhooks.COMMIT_HELD.is_set():
                continue  # a test holds this rank's commit (testhooks.COMMIT_HELD)
            limit = self.limit()
            with self._lock:
                lost = self._watch.silent(self.clock(), limit)
            if lost is not None:
                self._declare(lost, f"(limit {limit:.1f}s)")
                return

    def _declare(self, lost: Lost, context: str) -> None:
        with self._lock:
            if self._declared:
                return
            self._declared = True
        self._stop.set()
        self.on_lost(self.describe(lost, context))

    def describe(self, lost: Lost, context: str) -> str:
        """The one line the log and the termination message get."""
        if lost.rank is None:
            host = self._hosts.get(STORE_HOST_RANK)
            who = f"rank {STORE_HOST_RANK}'s node (the c10d store at {self.address})"
            what = "answered nothing"
        else:
            host = self._hosts.get(lost.rank)
            who = f"rank {lost.rank}" + (f" ({host})" if host else "")
            what = "sent no heartbeat"
        # The lost pod, in words the operator parses: it need not wait for that pod.
        named = f" [{contract.lost_pod_words(host)}]" if host else ""
        return (
            f"peer lost: {who} {what} for {lost.quiet:.1f}s {context}; rank {self.rank} "
            f"exits {contract.EXIT_PEER_LOST}{named}"
        )


def start_monitor(
    rank: int, world_size: int, env: Mapping[str, str] = os.environ
) -> PeerMonitor | None:
    """The heartbeat of this rank over the default process group's store; None when it is
    turned off (``SPOTRUN_PEER_TIMEOUT_SECONDS=0``) or the store cannot be cloned."""
    floor = seconds_from_env(
        env,
        contract.ENV_PEER_TIMEOUT_SECONDS,
        contract.DEFAULT_PEER_TIMEOUT_SECONDS,
        allow_zero=True,
    )
    if floor == 0 or world_size <= 1:
        return None
    # Keys of an earlier worker group must not pass for beats: torchrun's agent store
    # outlives a restart of its workers.
    generation = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = PrefixStore(f"spotrun-peers/{generation}", _get_default_store())
    try:
        monitor = PeerMonitor(store, rank, world_size, floor)
    except RuntimeError as e:  # a store without clone(): no heartbeat, as before
        log.warning("peer heartbeat off: %s", _first_line(e))
        return None
    return monitor.start()


def _bounded(fn: Callable[[], object], seconds: float) -> None:
    """Run ``fn`` in a daemon thread and wait ``seconds`` at most; errors are logged."""

    def run() -> None:
        try:
            fn()
        except RuntimeError as e:
            log.debug("peer heartbeat: %s", _first_line(e))

    thread = threading.Thread(target=run, name="peer-leave", daemon=True)
    thread.start()
    thread.join(seconds)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
