"""Which woken run a free reconcile thread takes (dispatch.py, controller-runtime's priority
queue): what an event or a deadline asked for before the periodic looks, an event moves a
waiting look up, and nothing starts while this replica may not act."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client import ApiClient
from prometheus_client import CollectorRegistry

from spotrun_operator.config import OperatorConfig
from spotrun_operator.dispatch import EVENT_PRIORITY, LOW_PRIORITY, Dispatcher
from spotrun_operator.kube import Kube
from spotrun_operator.metrics import Metrics
from spotrun_operator.runner import Runner


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as p:
        yield p


async def until(what: str, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def blocker(ran: list[str]) -> tuple[threading.Event, Callable[[], str]]:
    """A call that holds the only thread until released."""
    release = threading.Event()

    def hold() -> str:
        ran.append("held")
        release.wait(5)
        return "held"

    return release, hold


def note(ran: list[str], name: str) -> Callable[[], str]:
    def call() -> str:
        ran.append(name)
        return name

    return call


def test_events_and_deadlines_go_before_periodic_looks(pool: ThreadPoolExecutor) -> None:
    async def scenario() -> list[str]:
        ran: list[str] = []
        dispatch: Dispatcher[str] = Dispatcher(pool, workers=1)
        release, hold = blocker(ran)
        first = asyncio.create_task(dispatch.run("busy", EVENT_PRIORITY, hold))
        await until("the thread taken", lambda: ran == ["held"])
        calls = [
            asyncio.create_task(dispatch.run(key, prio, note(ran, key)))
            for key, prio in (("a", LOW_PRIORITY), ("b", EVENT_PRIORITY), ("c", LOW_PRIORITY))
        ]
        await until("three waiting", lambda: dispatch.waiting() == 3)
        release.set()
        assert await asyncio.gather(first, *calls) == ["held", "a", "b", "c"]
        await dispatch.shutdown()
        return ran

    assert asyncio.run(scenario()) == ["held", "b", "a", "c"]


def test_an_event_moves_a_waiting_periodic_look_up(pool: ThreadPoolExecutor) -> None:
    async def scenario() -> list[str]:
        ran: list[str] = []
        dispatch: Dispatcher[str] = Dispatcher(pool, workers=1)
        release, hold = blocker(ran)
        first = asyncio.create_task(dispatch.run("busy", EVENT_PRIORITY, hold))
        await until("the thread taken", lambda: ran == ["held"])
        a = asyncio.create_task(dispatch.run("a", LOW_PRIORITY, note(ran, "a")))
        b = asyncio.create_task(dispatch.run("b", LOW_PRIORITY, note(ran, "b")))
        await until("two waiting", lambda: dispatch.waiting() == 2)
        dispatch.bump("b")
        dispatch.bump("busy")  # already running: nothing to move
        dispatch.bump("unknown")
        release.set()
        await asyncio.gather(first, a, b)
        await dispatch.shutdown()
        return ran

    # b ran once although it was queued twice (its first entry is skipped).
    assert asyncio.run(scenario()) == ["held", "b", "a"]


def test_nothing_starts_while_the_gate_is_closed(pool: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        ran: list[str] = []
        gate = asyncio.Event()
        dispatch: Dispatcher[str] = Dispatcher(pool, workers=1, gate=gate)
        call = asyncio.create_task(dispatch.run("a", EVENT_PRIORITY, note(ran, "a")))
        for _ in range(20):  # the worker has taken it and waits on the gate
            await asyncio.sleep(0)
        assert ran == [] and not call.done()
        gate.set()
        assert await call == "a"
        await dispatch.shutdown()

    asyncio.run(scenario())


def test_errors_reach_the_caller_and_a_cancelled_wait_never_runs(
    pool: ThreadPoolExecutor,
) -> None:
    async def scenario() -> list[str]:
        ran: list[str] = []
        dispatch: Dispatcher[str] = Dispatcher(pool, workers=1)
        release, hold = blocker(ran)
        first = asyncio.create_task(dispatch.run("busy", EVENT_PRIORITY, hold))
        await until("the thread taken", lambda: ran == ["held"])
        gone = asyncio.create_task(dispatch.run("gone", EVENT_PRIORITY, note(ran, "gone")))

        def fail() -> str:
            raise ValueError("reconcile failed")

        failing = asyncio.create_task(dispatch.run("f", EVENT_PRIORITY, fail))
        await until("two waiting", lambda: dispatch.waiting() == 2)
        gone.cancel()
        release.set()
        await first
        with pytest.raises(ValueError, match="reconcile failed"):
            await failing
        await dispatch.shutdown()
        return ran

    assert asyncio.run(scenario()) == ["held"]


def test_a_runs_periodic_look_waits_behind_events_and_deadlines() -> None:
    """The run's loop: after a decision with no deadline of its own (requeue at the
    resync period) the next look is periodic (LOW_PRIORITY); a watch event's wake-up and a
    decision's own deadline are not; nor is the first look of a run created after start,
    while a run of the initial listing is looked at first at LOW_PRIORITY."""
    cfg = OperatorConfig(resync_seconds=0.05)
    runner = Runner(kube=Kube(ApiClient()), cfg=cfg, metrics=Metrics(CollectorRegistry()))
    # listed: 60 s; r: resync, 5 s (woken before), a deadline, gone
    delays = iter([60.0, 0.05, 5.0, 0.01, None])
    seen: list[int] = []
    run = runner.dispatch.run

    async def recorded(key: Any, priority: int, call: Callable[[], Any]) -> Any:
        seen.append(priority)
        return await run(key, priority, call)

    def reconcile(_ns: str, _name: str, _queued: float) -> float | None:
        return next(delays)

    runner.dispatch.run = recorded  # type: ignore[method-assign]
    runner.reconcile = reconcile  # type: ignore[method-assign,assignment]

    async def scenario() -> None:
        runner.ensure("ns", "listed")  # before the caches synced: of the initial listing
        runner.synced.set()
        await until("the listed run's look", lambda: len(seen) == 1)
        runner.ensure("ns", "r")
        await until("the new run's second look", lambda: len(seen) == 3)
        runner.wake("ns", "r")
        await until("the run gone", lambda: ("ns", "r") not in runner._tasks)
        runner.forget("ns", "listed")
        await runner.shutdown()

    asyncio.run(scenario())
    # listed; then r: first (created after start), periodic, woken, after a deadline
    assert seen == [LOW_PRIORITY, EVENT_PRIORITY, LOW_PRIORITY, EVENT_PRIORITY, EVENT_PRIORITY]
