"""The scale bench's account of a recovery's status writes (bench/recovery_phases.py):
each write is labelled by what it changed, so the writes per recovery are explained."""

from __future__ import annotations

from typing import Any

import recovery_phases as rp


def _status(phase: str, attempt: int, *entries: dict[str, Any], **rest: Any) -> dict[str, Any]:
    return {"phase": phase, "attempt": attempt, "attempts": list(entries), **rest}


def test_each_write_is_named_by_the_fields_it_changed() -> None:
    running = _status("Running", 1, {"attempt": 1, "startedAt": "t0"}, message="a1 running")
    verdict = _status(
        "Recovering",
        1,
        {"attempt": 1, "startedAt": "t0", "outcome": "Preempted", "endedAt": "t1"},
        preemptions=1,
        message="preempted",
    )
    assert rp.status_change(running, verdict, 1) == "old.endedAt,old.outcome,phase,preemptions"
    created = {**verdict, "attempt": 2, "attempts": [*verdict["attempts"], {"attempt": 2}]}
    assert rp.status_change(verdict, created, 1) == "attempt,new.created"
    # Only derived strings changed: they name the write.
    assert rp.status_change(created, {**created, "message": "x"}, 1) == "message"
    assert rp.status_change(created, created, 1) == "nothing"


def test_the_table_counts_writes_per_recovered_run() -> None:
    done = rp.Recovery(run="a", size=1, t_signal=1.0, t_created=2.0, t_running=3.0)
    done.status_writes = ["old.outcome", "new.created", "new.startedAt"]
    other = rp.Recovery(run="b", size=1, t_signal=1.0, t_created=2.0, t_running=3.0)
    other.status_writes = ["old.outcome", "new.created,old.stoppedAt", "new.startedAt"]
    unfinished = rp.Recovery(run="c", size=1, t_signal=1.0)
    unfinished.status_writes = ["old.outcome"] * 9
    table = rp.status_write_table([done, other, unfinished])
    assert table["recoveries"] == 2 and table["per_recovery"] == 3.0
    assert table["by_change"] == {
        "old.outcome": 1.0,
        "new.startedAt": 1.0,
        "new.created": 0.5,
        "new.created,old.stoppedAt": 0.5,
    }
