"""startup_gc: the collector is off for start-up, and back on (start-up's objects frozen)
after it, unless it was off before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from spotrun_trainer import startup_gc


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    # A pause another test left behind (the module's flag is process-wide) would make
    # this test's first resume() freeze: start from none.
    startup_gc.resume()
    was_enabled = gc.isenabled()
    yield
    startup_gc.resume()
    gc.unfreeze()  # what a test froze goes back to the oldest generation
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_pause_turns_the_collector_off_and_resume_freezes_start_up_then_turns_it_on() -> None:
    gc.enable()
    gc.unfreeze()
    startup_gc.pause()
    assert not gc.isenabled() and startup_gc.paused()
    allocated_during_start_up = [[i] for i in range(100)]
    startup_gc.resume()
    assert gc.isenabled() and not startup_gc.paused()
    # Start-up's objects are in the permanent generation: collections no longer walk them.
    assert gc.get_freeze_count() >= len(allocated_during_start_up)


def test_resume_is_idempotent_and_does_nothing_without_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Freezes are counted by a spy: the frozen count itself falls whenever a frozen object
    # is freed, by this thread or another one, so it cannot tell a second freeze apart.
    freezes: list[int] = []
    real_freeze = gc.freeze

    def counted_freeze() -> None:
        freezes.append(1)
        real_freeze()

    monkeypatch.setattr(gc, "freeze", counted_freeze)
    gc.enable()
    startup_gc.resume()
    assert gc.isenabled() and freezes == []  # nothing paused: nothing frozen
    startup_gc.pause()
    startup_gc.resume()
    assert gc.isenabled() and freezes == [1]
    gc.disable()  # someone else's choice after start-up
    startup_gc.resume()
    assert not gc.isenabled() and freezes == [1]


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    startup_gc.pause()
    assert not startup_gc.paused()
    startup_gc.resume()
    assert not gc.isenabled()
