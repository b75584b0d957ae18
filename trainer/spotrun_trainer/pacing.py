"""Pacing of the background checkpoint writer, and the flag that makes it hurry.

A paced writer (``WriterOptions.max_write_mb_per_s``) sleeps after each buffer so that it
is busy only part of the time and leaves the CPU to the training step. That is worth it
only while training goes on beside the write. Once the node is going (SIGTERM/SIGINT, the
spot notice) or the run is ending, every second of pacing is a second less of the grace
period, so :class:`Hurry` is raised and every paced write, the one in flight included,
drops its pace at once; a write that starts after it is not paced at all.

Where the write runs decides how the flag reaches it:

- thread mode: DCP's writer thread is in the trainer process and shares the
  :class:`Hurry` objects; a writer asleep in its pace sees the node's hurry within
  ``POLL_SECONDS`` (its write's own hurry, an ``Event``, wakes it at once).
- process mode: DCP spawns its checkpoint process once, at the first async save, and
  pickles the storage writer (with its ``Hurry``) to it through a pipe with every save.
  ``multiprocessing`` events and shared values can reach a process only when it is
  started, not through that pipe; a signal would need the checkpoint process's pid (a
  private attribute of DCP) and a handler installed before the first one arrives; a named
  shared-memory block is unlinked by the child's resource tracker when the child exits.
  So the flag is a file: ``set()`` creates an empty file at a path chosen by the trainer,
  and the copy in the checkpoint process looks for it (one ``stat``, microseconds) after
  each 8 MiB buffer and every ``POLL_SECONDS`` of a pace's sleep. A file is visible to
  every process of the node, whenever it was started; the path is unique per trainer
  process (pid and a random token) and removed by ``close()``.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# How often a writer asleep in its pace looks for a flag it cannot be woken by (the flag
# file from another process, a parent's Event): the most a hurry waits there.
POLL_SECONDS = 0.05


class Hurry:
    """A one-way flag: the node is going (or the run is ending), writes must not be paced.

    The object made in the trainer process owns the flag file; a copy unpickled elsewhere
    (DCP's checkpoint process) only reads it. A hurry with a ``parent`` (one write's, under
    the node's) is also raised when its parent is."""

    def __init__(
        self, folder: str | os.PathLike[str] | None = None, parent: Hurry | None = None
    ) -> None:
        base = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        self.path = base / f"spotrun-hurry-{os.getpid()}-{secrets.token_hex(8)}"
        self.parent = parent
        self._event = threading.Event()
        self._owner = True
        self._remove: weakref.finalize[[Path], Hurry] | None = None

    def set(self) -> None:
        """Raise the flag (idempotent; the stop guard calls it on a stop or save request)."""
        if self._event.is_set():
            return
        self._event.set()
        if self._owner:
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as e:  # the checkpoint process keeps its pace; the thread does not
                log.warning("could not create the hurry flag %s: %s", self.path, e)
                return
            # Removed by close(), else when this object goes or the interpreter exits.
            self._remove = weakref.finalize(self, _unlink, self.path)

    def is_set(self) -> bool:
        if self._event.is_set():
            return True
        if (not self._owner and self.path.exists()) or (
            self.parent is not None and self.parent.is_set()
        ):
            self._event.set()  # seen once, no more stat calls
            return True
        return False

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; return as soon as the flag is raised."""
        end = time.monotonic() + seconds
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            # The owner's Event is set by set(); a copy's, or a parent's raise, is seen
            # only by is_set() looking.
            polled = not self._owner or self.parent is not None
            self._event.wait(min(left, POLL_SECONDS) if polled else left)

    def close(self) -> None:
        """Remove the flag file (owner only); the flag stays raised in this object."""
        if self._remove is not None:
            self._remove()

    def __getstate__(self) -> dict[str, Any]:
        # The Event cannot cross a process boundary; the file can. Raised before pickling,
        # the copy starts raised.
        return {"path": str(self.path), "set": self._event.is_set(), "parent": self.parent}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self.parent = state["parent"]
        self._event = threading.Event()
        if state["set"]:
            self._event.set()
        self._owner = False
        self._remove = None


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # pragma: no cover - a vanished temp folder
        log.debug("could not remove %s: %s", path, e)


class Pacer:
    """Holds a writer to ``max_mb_per_s`` from its start (0: unpaced) until ``hurry`` is
    raised; from then on it never sleeps again."""

    def __init__(self, max_mb_per_s: float, hurry: Hurry | None = None) -> None:
        self._rate = max_mb_per_s * 1e6  # bytes per second
        self._hurry = hurry
        self._t0 = time.monotonic()
        self.slept = 0.0  # seconds spent in the pace (bench, tests)
        self.hurried = False  # the pace was dropped by a hurry

    @property
    def paced(self) -> bool:
        return self._rate > 0

    def pace(self, done: int) -> None:
        """Sleep until ``done`` bytes are due at the set rate (at most until a hurry)."""
        if self._rate <= 0:
            return
        if self._hurry is not None and self._hurry.is_set():
            self._drop()
            return
        ahead = done / self._rate - (time.monotonic() - self._t0)
        if ahead <= 0:
            return
        t0 = time.monotonic()
        if self._hurry is None:
            time.sleep(ahead)
        else:
            self._hurry.sleep(ahead)
        self.slept += time.monotonic() - t0
        if self._hurry is not None and self._hurry.is_set():
            self._drop()

    def _drop(self) -> None:
        self._rate, self.hurried = 0.0, True
        log.info("checkpoint writer hurried: pace dropped after %.1fs of sleep", self.slept)


def leave_process_group() -> None:
    """Move DCP's checkpoint process (the caller) into a process group of its own.

    torchrun stops a worker with ``killpg(SIGTERM)`` on the worker's group, and the
    checkpoint process, spawned by the worker, is in that group: the signal killed it
    mid-write, so the save in flight at a stop was lost (the stop's own save, written by
    the trainer, still committed). In its own group the checkpoint process is reached by
    no group signal; the trainer's guard handles the stop and raises the hurry, and the
    process still ends with the trainer: multiprocessing terminates a daemonic child when
    its parent exits, and the child's pipe closes when the parent dies. Until the first
    save sets it up, a stop still reaches a starting checkpoint process."""
    try:
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)
    except OSError as e:  # pragma: no cover - a session leader, or a sandbox that refuses
        log.debug("checkpoint process keeps its process group: %s", e)


class WriteHurries:
    """The node's hurry and one more for each background write, under it: raising the
    write's own (``hurry_write``: the loop now waits for that write, so its pace only
    adds to the stall) leaves the node's down, and the next write is paced again."""

    def __init__(self, node: Hurry | None = None) -> None:
        self.node = node or Hurry()
        self._write: Hurry | None = None

    def next_write(self) -> Hurry:
        """The hurry of a new write (the previous write's is done with)."""
        self.close()
        self._write = Hurry(parent=self.node)
        return self._write

    def hurry_write(self) -> None:
        if self._write is not None:
            self._write.set()

    def close(self) -> None:
        if self._write is not None:
            self._write.close()
            self._write = None
