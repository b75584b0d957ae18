"""Peer heartbeats (peers.py): a silent peer or store is lost after the limit, a live or
cleanly departed one never is; the limit is the floor or k median steps; the process
groups get a bounded timeout. Real TCPStores, in process: no process group needed."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore

from spotrun_api import contract
from spotrun_trainer import distributed, peer_watch, peers, pod_io, testhooks
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.peer_watch import Lost, PeerWatch
from spotrun_trainer.peers import PeerMonitor

DEADLINE = 30.0  # generous: a busy 2-core box


# --- the judgement, pure -------------------------------------------------------------------


def test_a_peer_is_lost_only_after_the_limit_of_silence_on_our_clock() -> None:
    w = PeerWatch([1, 2], now=0.0)
    w.saw({1: b"1", 2: b"1"}, 1.0)
    w.saw({1: b"2", 2: b"1"}, 2.0)  # rank 2 stopped moving at the read at t=1
    assert w.silent(5.9, limit=5.0) is None
    assert w.silent(6.5, limit=5.0) == Lost(2, 5.5)


def test_a_peer_that_never_beats_gets_the_limit_from_the_start() -> None:
    w = PeerWatch([1], now=10.0)
    w.saw({}, 11.0)  # its key does not exist yet; the store answers
    assert w.silent(14.0, limit=5.0) is None
    assert w.silent(15.5, limit=5.0) == Lost(1, 5.5)


def test_a_silent_store_is_named_before_the_peers_it_hides() -> None:
    w = PeerWatch([1, 2], now=0.0)
    w.saw({1: b"1", 2: b"1"}, 1.0)
    lost = w.silent(9.0, limit=5.0)
    assert lost is not None and lost.rank is None  # nothing read since t=1: the store


def test_a_peer_that_left_cleanly_is_never_lost() -> None:
    w = PeerWatch([1, 2], now=0.0)
    w.saw({1: b"3", 2: peer_watch.LEFT}, 1.0)
    w.saw({1: b"4", 2: peer_watch.LEFT}, 100.0)
    assert w.silent(101.0, limit=5.0) is None
    # Once rank 0 (the store's host) left, the store going away is expected too.
    w0 = PeerWatch([0], now=0.0)
    w0.saw({0: peer_watch.LEFT}, 1.0)
    assert w0.silent(100.0, limit=5.0) is None


def test_after_an_error_silence_counts_from_the_error_and_a_beat_must_follow_it() -> None:
    w = PeerWatch([1], now=0.0)
    w.saw({1: b"1"}, 1.0)
    w.saw({1: b"2"}, 2.0)  # beat somewhere in (1, 2]
    since = 1.5  # the error: the beat seen at t=2 may have come before it
    assert not w.beat_since(since)
    assert w.silent(2.4, limit=0.5, since=since) is None  # measured from the read at t=2
    w.saw({1: b"2"}, 2.5)  # the store answers, the peer does not move
    lost = w.silent(2.6, limit=0.5, since=since)
    assert lost is not None and lost.rank == 1 and lost.quiet == pytest.approx(0.6)
    w.saw({1: b"3"}, 3.0)  # a beat in (2.5, 3]: certainly after the error
    assert w.beat_since(since)


def test_the_limit_is_the_floor_or_k_median_steps() -> None:
    steps = peer_watch.StepTimes(window=3)
    assert steps.median() is None
    assert peer_watch.peer_limit(30.0, steps.median(), 10) == 30.0
    for s in (0.5, 9.0, 4.0, 5.0):  # the first falls out of the window
        steps.add(s)
    assert steps.median() == 5.0
    assert peer_watch.peer_limit(30.0, steps.median(), 10) == 50.0
    assert peer_watch.peer_limit(30.0, 0.1, 10) == 30.0


# --- the contract and the environment ------------------------------------------------------


def test_the_exit_code_clashes_with_no_convention() -> None:
    code = contract.EXIT_PEER_LOST
    assert code not in (contract.EXIT_DONE, contract.EXIT_STOPPED, 1, 2, 137, 143, 255)
    assert not 64 <= code <= 78  # sysexits.h
    assert 2 < code < 126  # below the shell's 126/127 and 128 + signal


def test_timeouts_come_from_the_env_with_documented_defaults() -> None:
    assert peers.collective_timeout({}) == dt.timedelta(
        seconds=contract.DEFAULT_COLLECTIVE_TIMEOUT_SECONDS
    )
    env = {contract.ENV_COLLECTIVE_TIMEOUT_SECONDS: "90"}
    assert peers.collective_timeout(env) == dt.timedelta(seconds=90)
    assert contract.DEFAULT_COLLECTIVE_TIMEOUT_SECONDS > contract.DEFAULT_PEER_TIMEOUT_SECONDS
    for bad in ("soon", "-1", "0", "inf"):
        with pytest.raises(ValueError, match=contract.ENV_COLLECTIVE_TIMEOUT_SECONDS):
            peers.collective_timeout({contract.ENV_COLLECTIVE_TIMEOUT_SECONDS: bad})
    name = contract.ENV_PEER_TIMEOUT_SECONDS
    assert pod_io.seconds_from_env({name: "0"}, name, 30, allow_zero=True) == 0.0  # off


def test_no_monitor_when_turned_off_or_alone() -> None:
    off = {contract.ENV_PEER_TIMEOUT_SECONDS: "0"}
    assert peers.start_monitor(0, 2, off) is None
    assert peers.start_monitor(0, 1, {}) is None


def test_the_termination_message_goes_where_the_kubelet_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "termination-log"
    env = {contract.ENV_TERMINATION_MESSAGE_PATH: str(named)}
    assert pod_io.write_termination_message("peer lost: rank 1", env) == named
    assert named.read_text() == "peer lost: rank 1\n"
    # Outside a pod the default path does not exist: never created.
    absent = tmp_path / "dev" / "termination-log"
    monkeypatch.setattr(contract, "DEFAULT_TERMINATION_MESSAGE_PATH", str(absent))
    assert pod_io.write_termination_message("x", {}) is None and not absent.exists()


# --- real stores ---------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[TCPStore]:
    store = TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    yield store


def _client(server: TCPStore) -> PrefixStore:
    store = TCPStore(server.host, server.port, None, False, dt.timedelta(seconds=10))
    return PrefixStore("test", store)


def _monitor(
    store: PrefixStore, rank: int, floor: float, on_lost: peers.OnLost | None = None
) -> PeerMonitor:
    """Beats every 50 ms, a confirm window of 0.5 s: the real ones, faster."""
    return PeerMonitor(store, rank, 2, floor, interval=0.05, confirm=0.5, on_lost=on_lost)


class Losses:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.event = threading.Event()

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.event.set()


class Peer:
    """Rank ``rank`` played by a thread: beats every 20 ms until stopped."""

    def __init__(self, store: PrefixStore, rank: int) -> None:
        self.store, self.rank, self.stop = store, rank, threading.Event()
        store.set(f"host/{rank}", f"pod-{rank}")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.store.add(f"beat/{self.rank}", 1)


def test_a_peer_that_stops_beating_is_lost_and_named(server: TCPStore) -> None:
    losses = Losses()
    peer = Peer(_client(server), 1)
    monitor = _monitor(_client(server), 0, 0.5, losses).start()
    try:
        time.sleep(1.0)  # twice the floor: a beating peer is not lost
        assert losses.messages == []
        peer.stop.set()
        assert losses.event.wait(DEADLINE)
        (message,) = losses.messages
        assert message.startswith("peer lost: rank 1 (pod-1) sent no heartbeat for")
        assert f"rank 0 exits {contract.EXIT_PEER_LOST}" in message
        # The words the operator reads to stop waiting for that pod.
        assert contract.lost_pod_named(message) == "pod-1"
    finally:
        peer.stop.set()
        monitor.stop(clean=False)


def test_a_rank_whose_commit_a_test_holds_judges_no_peer_until_released(
    server: TCPStore,
) -> None:
    # testhooks.COMMIT_HELD: a test keeps a cut-off rank alive until a newer attempt has
    # fenced the folder; once the hold ends the heartbeat judges again.
    losses = Losses()
    peer = Peer(_client(server), 1)
    monitor = _monitor(_client(server), 0, 0.5, losses).start()
    testhooks.COMMIT_HELD.set()
    try:
        _until_peers_beat(monitor)
        peer.stop.set()
        time.sleep(2.0)  # four times the limit: a judging rank would have declared
        assert losses.messages == []
        testhooks.COMMIT_HELD.clear()
        assert losses.event.wait(DEADLINE)
        assert "rank 1 (pod-1) sent no heartbeat" in losses.messages[0], losses.messages
    finally:
        testhooks.COMMIT_HELD.clear()
        peer.stop.set()
        monitor.stop(clean=False)


def _until_peers_beat(monitor: PeerMonitor) -> None:
    """Poll, with a deadline, until the monitor has seen every peer beat since now."""
    since = time.monotonic()
    deadline = since + DEADLINE
    while not monitor._watch.beat_since(since):
        assert time.monotonic() < deadline, "the monitor saw no beat from its peers"
        time.sleep(0.05)  # poll interval, bounded by the deadline


def test_a_peer_that_left_cleanly_is_not_lost(server: TCPStore) -> None:
    losses = Losses()
    leaving = _monitor(_client(server), 1, 0.5, losses).start()
    monitor = _monitor(_client(server), 0, 0.5, losses).start()
    try:
        _until_peers_beat(monitor)
        leaving.stop(clean=True)
        assert not losses.event.wait(2.0)  # four times the floor
    finally:
        monitor.stop(clean=False)


def test_a_store_that_goes_away_is_lost(server: TCPStore) -> None:
    """Rank 1's view when rank 0, which hosts the TCPStore, dies."""
    losses = Losses()
    own = TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    peer = Peer(_client(own), 0)
    monitor = _monitor(_client(own), 1, 0.5, losses).start()
    try:
        _until_peers_beat(monitor)
        peer.stop.set()
        peer.thread.join()
        del peer, own  # the server goes with its last reference
        assert losses.event.wait(DEADLINE)
        assert "rank 0's node (the c10d store at 127.0.0.1:" in losses.messages[0]
    finally:
        monitor.stop(clean=False)


def test_a_collective_error_confirms_a_dead_peer_in_the_confirm_window(server: TCPStore) -> None:
    losses = Losses()
    peer = Peer(_client(server), 1)
    # A floor far away: only the error's confirm window can decide within the test.
    monitor = _monitor(_client(server), 0, 600, losses).start()
    try:
        _until_peers_beat(monitor)
        alive = RuntimeError("Connection reset by peer")
        monitor.after_error(alive)  # the peer still beats: the error is the application's
        assert losses.messages == [] and "no peer lost" in alive.__notes__[0]
        peer.stop.set()
        monitor.after_error(RuntimeError("Connection reset by peer"))
        assert losses.event.is_set()
        assert "rank 1 (pod-1)" in losses.messages[0]
        assert "after a failed collective (Connection reset by peer)" in losses.messages[0]
    finally:
        peer.stop.set()
        monitor.stop(clean=False)


def test_arrive_waits_for_every_rank_without_a_timeout(server: TCPStore) -> None:
    ranks = [_monitor(_client(server), r, 600) for r in range(2)]
    arrived: list[int] = []

    def rank1() -> None:
        ranks[1].arrive()
        arrived.append(1)

    late = threading.Thread(target=rank1, daemon=True)
    late.start()
    late.join(0.3)  # a bounded look: rank 1 must still be waiting for rank 0
    assert late.is_alive() and arrived == []
    ranks[0].arrive()
    late.join(DEADLINE)
    assert arrived == [1]


# --- the wiring ----------------------------------------------------------------------------


class FakeMonitor:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.stopped: list[bool] = []
        self.steps: list[float] = []

    def after_error(self, error: BaseException) -> None:
        self.errors.append(error)

    def stop(self, clean: bool) -> None:
        self.stopped.append(clean)

    def observe_step(self, seconds: float) -> None:
        self.steps.append(seconds)


def _ctx(monitor: FakeMonitor) -> DistContext:
    ctx = DistContext(0, 2, 0, torch.device("cpu"), "gloo")
    ctx.peers = monitor  # type: ignore[assignment]
    return ctx


def test_a_failed_collective_asks_the_monitor_then_goes_on() -> None:
    monitor = FakeMonitor()
    ctx = _ctx(monitor)
    with pytest.raises(RuntimeError, match="reset"), ctx.peers_checked():
        raise RuntimeError("Connection reset by peer")
    with pytest.raises(ValueError), ctx.peers_checked():
        raise ValueError("not a collective's error")
    assert [str(e) for e in monitor.errors] == ["Connection reset by peer"]
    ctx.observe_step(0.25)
    assert monitor.steps == [0.25]


def test_shutdown_leaves_cleanly_only_without_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monitor = FakeMonitor()
    distributed.shutdown(_ctx(monitor))
    with pytest.raises(KeyError):
        try:
            raise KeyError("the application failed")
        finally:
            distributed.shutdown(_ctx(monitor))
    assert monitor.stopped == [True, False]


def test_every_process_group_gets_the_bounded_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(dist, "new_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed, "start_monitor", lambda *a: None)
    env = {"WORLD_SIZE": "2", "RANK": "1", contract.ENV_COLLECTIVE_TIMEOUT_SECONDS: "42"}
    ctx = distributed.init_distributed("cpu", env)
    assert ctx.world_size == 2 and ctx.peers is None
    # the default group and the checkpoint group (gloo: no separate control group)
    assert [kw["timeout"] for kw in calls] == [dt.timedelta(seconds=42)] * 2
