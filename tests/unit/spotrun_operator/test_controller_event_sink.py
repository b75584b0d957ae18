"""event_sink.EventSink against client-go's broadcaster (tools/record/event.go): events are
queued without waiting, written in order by one thread, correlated once however often
the write is tried, tried again only when the apiserver could not be reached, at most
``maxTriesPerEvent`` times with the first sleep randomized, dropped when 1000 wait, and
tried once after shutdown."""

from __future__ import annotations

import threading

from spotrun_operator.kubeio.event_sink import MAX_QUEUED_EVENTS, MAX_TRIES_PER_EVENT, EventSink
from spotrun_operator.kubeio.recorder import Send
from spotrun_operator.model.plan import Event, RunRef

REF = RunRef("r", "ml", "uid-1")


def ev(reason: str) -> Event:
    return Event("Normal", reason, f"{reason} happened")


class Writer:
    """Answers each write from ``answers`` (True: done; False: unreachable), then True."""

    def __init__(self, answers: list[bool] | None = None) -> None:
        self.answers = list(answers or [])
        self.correlated: list[str] = []
        self.writes: list[tuple[str, str]] = []  # (reason, thread name)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a write has begun (the sink thread holds it)

    def correlate_event(self, ref: RunRef, e: Event) -> Send | None:
        self.correlated.append(e.reason)
        return None if e.reason == "Spam" else Send((e.reason,), e.message)

    def write_event(self, ref: RunRef, e: Event, send: Send) -> bool:
        self.entered.set()
        assert self.gate.wait(10)
        self.writes.append((e.reason, threading.current_thread().name))
        return self.answers.pop(0) if self.answers else True


def test_events_are_written_in_order_by_the_sink_thread_not_the_caller() -> None:
    writer = Writer()
    sink = EventSink(writer)
    for reason in ("Preempted", "Spam", "AttemptCreated"):
        assert sink.record(REF, ev(reason))
    assert sink.drained(10)
    assert writer.writes == [("Preempted", "event-sink"), ("AttemptCreated", "event-sink")]
    assert writer.correlated == ["Preempted", "Spam", "AttemptCreated"]  # Spam: filtered
    sink.shutdown()


class Sleeps(threading.Event):
    """The sink's stop flag, noting each sleep between tries instead of sleeping."""

    def __init__(self, sleeps: list[float]) -> None:
        super().__init__()
        self.sleeps = sleeps

    def wait(self, timeout: float | None = None) -> bool:
        self.sleeps.append(float(timeout or 0.0))
        return False


def test_an_unreachable_apiserver_is_tried_again_with_one_correlation() -> None:
    sleeps: list[float] = []
    writer = Writer([False, False, True])
    sink = EventSink(writer, sleep_seconds=0.01, rand=lambda: 0.5)
    sink._stopping = Sleeps(sleeps)
    sink.record(REF, ev("Preempted"))
    assert sink.drained(10)
    assert [r for r, _ in writer.writes] == ["Preempted"] * 3
    assert writer.correlated == ["Preempted"]  # a retry is not a second occurrence
    # The first sleep randomized (rand() x defaultSleepDuration), the next ones whole.
    assert sleeps == [0.005, 0.01]
    sink.shutdown()


def test_an_event_is_given_up_after_max_tries() -> None:
    writer = Writer([False] * (MAX_TRIES_PER_EVENT + 5))
    sink = EventSink(writer, sleep_seconds=0.0)
    sink.record(REF, ev("Preempted"))
    sink.record(REF, ev("AttemptCreated"))
    assert sink.drained(10)
    reasons = [r for r, _ in writer.writes]
    assert reasons.count("Preempted") == MAX_TRIES_PER_EVENT
    assert reasons[-1] == "AttemptCreated"  # the next event is still written
    sink.shutdown()


def test_a_full_queue_drops_the_event_without_waiting() -> None:
    writer = Writer()
    writer.gate.clear()  # the sink thread holds the first event
    sink = EventSink(writer)
    assert sink.record(REF, ev("First"))
    assert writer.entered.wait(10)  # the sink thread took it (and blocks)
    for i in range(MAX_QUEUED_EVENTS):
        assert sink.record(REF, ev(f"E{i}"))
    assert not sink.record(REF, ev("Dropped"))
    assert not sink.drained(0.05)
    writer.gate.set()
    assert sink.drained(30)
    assert len(writer.writes) == MAX_QUEUED_EVENTS + 1
    assert "Dropped" not in {r for r, _ in writer.writes}
    sink.shutdown()


def test_after_shutdown_an_event_is_tried_once() -> None:
    writer = Writer([False] * 5)
    writer.gate.clear()
    sink = EventSink(writer, sleep_seconds=60.0)
    sink.record(REF, ev("Preempted"))
    sink.record(REF, ev("AttemptCreated"))
    stopper = threading.Thread(target=sink.shutdown, kwargs={"timeout": 10})
    stopper.start()
    assert sink._stopping.wait(10)
    writer.gate.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert [r for r, _ in writer.writes] == ["Preempted", "AttemptCreated"]
