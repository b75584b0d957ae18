"""Test-only hooks, inert unless their environment variables are set.

They let a test deliver SIGTERM or SIGKILL at an exact step without racing the trainer:
the trainer announces events in a file the test polls, and can hold still at a step (or
just before committing a save) until a signal arrives.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, SupportsFloat

from spotrun_trainer.preemption import StopGuard

ENV_EVENTS_FILE = "SPOTRUN_TEST_EVENTS_FILE"  # append "<event> <rank> <step>" lines here
ENV_PAUSE_AT_STEP = "SPOTRUN_TEST_PAUSE_AT_STEP"  # hold after this step until a request
ENV_PAUSE_BEFORE_COMMIT = "SPOTRUN_TEST_PAUSE_BEFORE_COMMIT"  # hold forever before commit
# hold the first save of this step or a later one (a time-based interval saves at any
# step) just before its manifest (and its fence checks) until the file ENV_RELEASE_FILE
# names exists; that file also releases ENV_PAUSE_AT_STEP's hold
ENV_HOLD_BEFORE_COMMIT = "SPOTRUN_TEST_HOLD_BEFORE_COMMIT"
ENV_RELEASE_FILE = "SPOTRUN_TEST_RELEASE_FILE"
RELEASE_POLL_SECONDS = 0.05
# Set while a rank holds a commit for ENV_HOLD_BEFORE_COMMIT. Its peer heartbeat does not
# judge meanwhile (peers.py): a test can keep a rank cut off by a partition alive until a
# newer attempt has fenced the folder, and then watch its commit be refused; without it
# the rank's own heartbeat would end it first (EXIT_PEER_LOST).
COMMIT_HELD = threading.Event()
ENV_SAMPLES_FILE = "SPOTRUN_TEST_SAMPLES_FILE"  # append "<step> <rank> <loss> <ids>" lines here
# hold every overlapped checkpoint staging copy this long before it copies (sharded.py)
ENV_STAGING_DELAY = "SPOTRUN_TEST_STAGING_DELAY_SECONDS"


def _opt_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


class TestHooks:
    __test__ = False  # not a pytest class

    def __init__(self, env: Mapping[str, str], rank: int) -> None:
        path = env.get(ENV_EVENTS_FILE)
        self.events = Path(path) if path else None
        self.pause_at = _opt_int(env.get(ENV_PAUSE_AT_STEP))
        self.pause_before_commit = _opt_int(env.get(ENV_PAUSE_BEFORE_COMMIT))
        self.hold_before_commit = _opt_int(env.get(ENV_HOLD_BEFORE_COMMIT))
        release = env.get(ENV_RELEASE_FILE)
        self.release_file = Path(release) if release else None
        self.rank = rank
        samples = env.get(ENV_SAMPLES_FILE)
        self.samples_file = Path(samples) if samples else None
        self._ids: list[int] = []
        # torchrun starts each worker in its own session: a test that plays "node lost"
        # needs the pids to SIGKILL them along with the launcher.
        self.announce("pid", os.getpid())

    def announce(self, event: str, value: int) -> None:
        if self.events is not None:
            _append(self.events, f"{event} {self.rank} {value}\n")

    def samples(self, step: int, ids: Iterable[Any]) -> None:
        """Remember the sample ids of the step being taken (recorded with its loss)."""
        if self.samples_file is not None:
            self._ids = [int(i) for i in ids]

    def started(self, step: int, guard: StopGuard) -> None:
        self.announce("started", step)
        self._maybe_pause(step, guard)

    def after_step(self, step: int, guard: StopGuard, loss: SupportsFloat | None = None) -> None:
        if self.samples_file is not None:
            ids = ",".join(map(str, self._ids))
            value = float(loss) if loss is not None else float("nan")
            _append(self.samples_file, f"{step} {self.rank} {value!r} {ids}\n")
        self.announce("step", step)
        self._maybe_pause(step, guard)

    def _maybe_pause(self, step: int, guard: StopGuard) -> None:
        if step == self.pause_at:
            self.announce("paused", step)
            while not guard.wait_for_request(0.05) and not self._released():
                pass

    def _released(self) -> bool:
        return self.release_file is not None and self.release_file.exists()

    def before_commit(self, step: int) -> None:
        self.announce("committing", step)
        if step == self.pause_before_commit:
            self.announce("paused-commit", step)
            threading.Event().wait()  # until SIGKILL
        hold = self.hold_before_commit
        if hold is not None and step >= hold and self.release_file is not None:
            self.hold_before_commit = None  # once
            self.announce("holding-commit", step)
            COMMIT_HELD.set()
            try:
                while not self._released():
                    time.sleep(RELEASE_POLL_SECONDS)  # until the test releases it (or kills us)
            finally:
                COMMIT_HELD.clear()


def _append(path: Path, line: str) -> None:
    # One small O_APPEND write per line: atomic across the ranks sharing the file.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
