"""Events aggregated the way the Kubernetes event recorder does it: client-go's
``EventCorrelator`` (k8s.io/client-go tools/record/events_cache.go), transcribed.

For each event about a run, in order:

1. **spam filter** (``EventSourceObjectSpamFilter``): a token bucket per source and
   involved object, 25 events of burst refilled at 1 per 5 minutes; an event without a
   token is dropped;
2. **aggregation** (``EventAggregator``): events of one object with the same type and
   reason but different messages; from the 10th distinct message within 10 minutes they
   become one event "(combined from similar events): <latest message>";
3. **deduplication** (``eventLogger``): an event seen before (same object, type, reason,
   message; or the same aggregate) is not created again: the existing one's ``count`` and
   ``lastTimestamp`` are patched.

State is per operator process and bounded (an LRU of 4096 keys, like client-go's). Pure:
the clock is passed in; :mod:`kube` sends what :meth:`EventCorrelator.correlate` says
(a merge patch of ``count``, ``lastTimestamp`` and ``message`` where client-go patches
the same fields).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from spotrun_operator.model.plan import Event, RunRef

MAX_LRU_ENTRIES = 4096  # maxLruCacheEntries
AGGREGATE_MAX_EVENTS = 10  # defaultAggregateMaxEvents
AGGREGATE_INTERVAL_SECONDS = 600.0  # defaultAggregateIntervalInSeconds
SPAM_BURST = 25  # defaultSpamBurst
SPAM_QPS = 1.0 / 300.0  # defaultSpamQPS
COMBINED = "(combined from similar events): "  # EventAggregatorByReasonMessageFunc

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int = MAX_LRU_ENTRIES) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._size = size

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    last: float = 0.0


@dataclass
class _Posted:
    name: str  # the Event object's name
    count: int


@dataclass(frozen=True)
class Send:
    """What to send for one event: create a new Event (``name`` None) with ``message``,
    or patch Event ``name`` to ``count`` and ``message`` (its latest occurrence)."""

    key: tuple[str, ...]  # what the Event is remembered under (posted(), forget())
    message: str
    name: str | None = None
    count: int = 1


class EventCorrelator:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: _Lru[tuple[str, ...], _Bucket] = _Lru()
        self._similar: _Lru[tuple[str, ...], _Similar] = _Lru()
        self._posted: _Lru[tuple[str, ...], _Posted] = _Lru()

    def correlate(self, ref: RunRef, ev: Event) -> Send | None:
        """What to send for ``ev`` about ``ref``; None: dropped by the spam filter."""
        obj = (ref.namespace, ref.name, ref.uid)
        now = self._clock()
        with self._lock:
            if not self._take_token(obj, now):
                return None
            message, key = self._aggregate(obj, ev, now)
            posted = self._posted.get(key)
            if posted is None:
                return Send(key, message)
            posted.count += 1
            return Send(key, message, posted.name, posted.count)

    def posted(self, key: tuple[str, ...], name: str) -> None:
        """The Event created for ``key`` is ``name`` (count 1)."""
        with self._lock:
            self._posted.put(key, _Posted(name, 1))

    def forget(self, key: tuple[str, ...]) -> None:
        """The Event under ``key`` is gone (a patch answered 404): the next is created."""
        with self._lock:
            self._posted.pop(key)

    def _take_token(self, obj: tuple[str, ...], now: float) -> bool:
        bucket = self._buckets.get(obj) or _Bucket(float(SPAM_BURST), now)
        bucket.tokens = min(float(SPAM_BURST), bucket.tokens + (now - bucket.at) * SPAM_QPS)
        bucket.at = now
        self._buckets.put(obj, bucket)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _aggregate(
        self, obj: tuple[str, ...], ev: Event, now: float
    ) -> tuple[str, tuple[str, ...]]:
        group = (*obj, ev.type, ev.reason)
        similar = self._similar.get(group)
        if similar is None or now - similar.last > AGGREGATE_INTERVAL_SECONDS:
            similar = _Similar()
        similar.messages.add(ev.message)
        similar.last = now
        self._similar.put(group, similar)
        if len(similar.messages) < AGGREGATE_MAX_EVENTS:
            return ev.message, (*group, ev.message)
        return COMBINED + ev.message, group
