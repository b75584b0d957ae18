"""recorder.EventCorrelator against client-go's EventCorrelator (tools/record/events_cache.go):
deduplication by count, aggregation of similar events, the per-object spam filter."""

from __future__ import annotations

from spotrun_operator.kubeio.recorder import (
    AGGREGATE_INTERVAL_SECONDS,
    AGGREGATE_MAX_EVENTS,
    COMBINED,
    SPAM_BURST,
    SPAM_QPS,
    EventCorrelator,
    Send,
)
from spotrun_operator.model.plan import Event, RunRef

RUN = RunRef("llm", "ml", "uid-1")
OTHER = RunRef("other", "ml", "uid-2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def post(c: EventCorrelator, ev: Event, ref: RunRef = RUN) -> Send | None:
    send = c.correlate(ref, ev)
    if send is not None and send.name is None:
        c.posted(send.key, f"event-{send.message}")
    return send


def test_an_identical_event_bumps_the_count_of_the_first() -> None:
    c = EventCorrelator(Clock())
    ev = Event("Warning", "Preempted", "attempt 1: spot-interruption")
    first = post(c, ev)
    assert first is not None and (first.name, first.count) == (None, 1)
    again = post(c, ev)
    assert again is not None and (again.name, again.count) == (f"event-{ev.message}", 2)
    assert post(c, ev, OTHER) == Send(("ml", "other", "uid-2", *first.key[3:]), ev.message)
    # The Event was deleted meanwhile (a 404 on the patch): the next one is created anew.
    c.forget(first.key)
    assert post(c, ev) == Send(first.key, ev.message)


def test_the_tenth_similar_message_in_ten_minutes_is_combined() -> None:
    clock = Clock()
    c = EventCorrelator(clock)
    sends = [post(c, Event("Normal", "AttemptCreated", f"attempt {i}")) for i in range(12)]
    assert all(s is not None for s in sends)
    messages = [s.message for s in sends if s is not None]
    assert messages[: AGGREGATE_MAX_EVENTS - 1] == [f"attempt {i}" for i in range(9)]
    assert messages[AGGREGATE_MAX_EVENTS - 1] == COMBINED + "attempt 9"
    # One combined Event from then on, its count bumped with the latest message.
    later = [s for s in sends[AGGREGATE_MAX_EVENTS:] if s is not None]
    assert [(s.name, s.count, s.message) for s in later] == [
        (f"event-{COMBINED}attempt 9", 2, COMBINED + "attempt 10"),
        (f"event-{COMBINED}attempt 9", 3, COMBINED + "attempt 11"),
    ]
    # Another reason is another group; and after ten quiet minutes the group starts over.
    assert post(c, Event("Warning", "Preempted", "attempt 12")) == Send(
        ("ml", "llm", "uid-1", "Warning", "Preempted", "attempt 12"), "attempt 12"
    )
    clock.now += AGGREGATE_INTERVAL_SECONDS + 1
    fresh = post(c, Event("Normal", "AttemptCreated", "attempt 13"))
    assert fresh is not None and fresh.message == "attempt 13"


def test_a_burst_beyond_25_events_of_one_object_is_dropped_then_refilled() -> None:
    clock = Clock()
    c = EventCorrelator(clock)
    reasons = [f"R{i}" for i in range(SPAM_BURST + 3)]  # distinct reasons: no aggregation
    sent = [post(c, Event("Normal", r, "m")) for r in reasons]
    assert sum(s is not None for s in sent) == SPAM_BURST
    assert sent[SPAM_BURST:] == [None, None, None]
    assert post(c, Event("Normal", "x", "m"), OTHER) is not None  # per object
    clock.now += 1 / SPAM_QPS  # one token back after 5 minutes
    assert post(c, Event("Normal", "late", "m")) is not None
    assert post(c, Event("Normal", "later", "m")) is None
