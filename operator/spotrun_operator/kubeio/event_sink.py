"""Events leave the reconcile on a thread of their own, as client-go's event broadcaster
sends them (k8s.io/client-go tools/record/event.go, transcribed):

- ``recorder.Event`` only queues: ``ActionOrDrop`` into a broadcaster of
  ``maxQueuedEvents`` (1000) with ``DropIfChannelFull``; an event that finds the queue full
  is dropped with an error in the log, never waited for;
- one goroutine (``StartRecordingToSink``) takes them in order, correlates each once
  (:mod:`recorder`) and writes it (``recordEvent``); a write the apiserver answered, even
  with an error, is done ("something about the event is malformed and we should abandon
  it"); a transport error is tried again, up to ``maxTriesPerEvent`` (12) tries
  ``defaultSleepDuration`` (10 s) apart, the first sleep randomized "so that various
  clients won't all be synced up if the master goes down";
- after ``Shutdown`` an event is tried once before it is given up.

A recovery posts one event between its status write and the deletion of the old gang:
written inline it held a reconcile thread for a round trip that decides nothing
(in a burst of 100 recoveries every thread waited on these posts).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from spotrun_operator.kubeio.recorder import Send
from spotrun_operator.model.plan import Event, RunRef

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS: Final = 1000  # maxQueuedEvents
MAX_TRIES_PER_EVENT: Final = 12  # maxTriesPerEvent
SLEEP_SECONDS: Final = 10.0  # defaultSleepDuration


class EventWriter(Protocol):
    """What the sink needs of the API layer (implemented by ``kube.Kube``)."""

    def correlate_event(self, ref: RunRef, ev: Event) -> Send | None: ...

    def write_event(self, ref: RunRef, ev: Event, send: Send) -> bool: ...


class EventSink:
    """A bounded queue of events and the one thread that writes them."""

    def __init__(
        self,
        writer: EventWriter,
        *,
        sleep_seconds: float = SLEEP_SECONDS,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._writer = writer
        self._sleep = sleep_seconds
        self._rand = rand
        self._queue: queue.Queue[tuple[RunRef, Event] | None] = queue.Queue(MAX_QUEUED_EVENTS)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-sink", daemon=True)
        self._thread.start()

    def record(self, ref: RunRef, ev: Event) -> bool:
        """Queue ``ev`` about ``ref`` without waiting; False when it was dropped."""
        try:
            self._queue.put_nowait((ref, ev))
        except queue.Full:
            log.error(
                "event %s for %s/%s dropped: %d events queued",
                ev.reason,
                ref.namespace,
                ref.name,
                MAX_QUEUED_EVENTS,
            )
            return False
        return True

    def drained(self, timeout: float) -> bool:
        """Wait until every queued event was written or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def shutdown(self, timeout: float = 5.0) -> None:
        """Try what is queued once more each, for at most ``timeout`` seconds."""
        self._stopping.set()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._send(*item)
            except Exception:  # a bug here must not end event recording for good
                log.exception("event sink")
            finally:
                self._queue.task_done()

    def _send(self, ref: RunRef, ev: Event) -> None:
        what = f"event {ev.reason} for {ref.namespace}/{ref.name}"
        send = self._writer.correlate_event(ref, ev)
        if send is None:
            log.debug("%s dropped (spam filter)", what)
            return
        for tries in range(1, MAX_TRIES_PER_EVENT + 1):
            if self._writer.write_event(ref, ev, send):
                return
            if tries == MAX_TRIES_PER_EVENT:
                log.error("%s not written: retry limit exceeded", what)
                return
            delay = self._sleep * (self._rand() if tries == 1 else 1.0)
            if self._stopping.wait(delay):  # at once when shutting down
                log.error("%s not written: shutting down", what)
                return
