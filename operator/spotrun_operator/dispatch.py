"""Reconciles handed to the reconcile threads by priority, then in the order they came.

controller-runtime's priority queue (``pkg/controller/priorityqueue``, v0.20; the design's
motivation: a controller that "periodically re-reconcile[s] everything" delays "the
reconciliation of new or changed objects") puts what no event asked for behind what one
did: its handlers add the initial listing's objects and resyncs at ``LowPriority``
(-100), everything an event brings at 0, and an item added again while it waits keeps the
higher of its priorities. spotrun's runs look again every ``resync_seconds`` when nothing
happens; at 1,100 runs that is ~37 reconciles a second, and in a zone's spot storm a run
whose node was just reclaimed waited behind them for a thread (operator_scale: 14 % of
the storm's wake-ups queued over 1 s). Here a run woken by a watch event or by a deadline
of its own (a backoff, a settle time) goes first; the periodic look waits.

Each run has one reconcile at a time (its loop awaits it), so a key is queued at most once;
``bump`` raises a queued run's priority when an event wakes it before its turn.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")

# controller-runtime's handler.LowPriority and the default priority of an event's item.
LOW_PRIORITY = -100
EVENT_PRIORITY = 0


@dataclass(eq=False)
class _Pending(Generic[T]):
    call: Callable[[], T]
    done: asyncio.Future[T]
    priority: int
    taken: bool = field(default=False)


class Dispatcher(Generic[K]):
    """``workers`` coroutines, each taking the most urgent pending call and running it on
    ``pool`` (which has as many threads, so nothing waits inside the pool), while ``gate``
    is open."""

    def __init__(self, pool: Executor, workers: int, gate: asyncio.Event | None = None) -> None:
        self._pool = pool
        self._workers = workers
        # Closed while this replica may not act (a standby; leading cleared at SIGTERM):
        # nothing taken starts before it opens again.
        self._gate = gate
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Pending[Any]]] | None = None
        self._waiting: dict[K, _Pending[Any]] = {}
        self._order = itertools.count()

    async def run(self, key: K, priority: int, call: Callable[[], T]) -> T:
        """``call()`` on a reconcile thread, once the calls more urgent (or as urgent and
        queued before) have been taken."""
        queue = self._started()
        pending: _Pending[T] = _Pending(call, asyncio.get_running_loop().create_future(), priority)
        self._waiting[key] = pending
        queue.put_nowait((-priority, next(self._order), pending))
        try:
            return await pending.done
        finally:
            if self._waiting.get(key) is pending:
                del self._waiting[key]

    def bump(self, key: K, priority: int = EVENT_PRIORITY) -> None:
        """An event for ``key``: if its call still waits at a lower priority, it moves up
        (queued again; the first of its entries taken runs it, the other is skipped)."""
        pending = self._waiting.get(key)
        if pending is None or pending.taken or pending.priority >= priority:
            return
        pending.priority = priority
        assert self._queue is not None
        self._queue.put_nowait((-priority, next(self._order), pending))

    def waiting(self) -> int:
        return sum(1 for p in self._waiting.values() if not p.taken)

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _started(self) -> asyncio.PriorityQueue[tuple[int, int, _Pending[Any]]]:
        if self._queue is None:
            self._queue = asyncio.PriorityQueue()
            self._tasks = [
                asyncio.get_running_loop().create_task(self._work(), name=f"reconcile worker {i}")
                for i in range(self._workers)
            ]
        return self._queue

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            _, _, pending = await self._queue.get()
            if self._gate is not None:
                await self._gate.wait()
            if pending.taken or pending.done.done():  # moved up, or its run was cancelled
                continue
            pending.taken = True
            try:
                result = await loop.run_in_executor(self._pool, pending.call)
            except asyncio.CancelledError:
                if not pending.done.done():
                    pending.done.cancel()
                raise
            except Exception as exc:  # the caller's to handle, as run_in_executor's would be
                if not pending.done.done():
                    pending.done.set_exception(exc)
            else:
                if not pending.done.done():
                    pending.done.set_result(result)
