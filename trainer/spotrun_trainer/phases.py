"""Restart phases: where a new attempt's time goes between its process start and its first
training step, in five contiguous phases.

==============  ==================================================================
``start``       process start -> ``spotrun_trainer`` imported
``imports``     -> the library's first start-up call (``init_distributed`` or
                ``DistContext.of_framework``): torch and the program's imports
``process_group``  -> the process group (and spotrun's own groups) is up
``load``        -> the checkpoint was found and loaded (fence write and the model's
                construction included: the built-in trainer builds it before it loads)
``first_step``  -> the first reported step is done
==============  ==================================================================

Each phase ends at a mark (``mark``; wall-clock epoch seconds), the first one taken of its
kind in the process. A mark never precedes the one before it (a missing or early mark
counts as 0 s), so the phases add up to the time from process start to the first step
and ``t0`` plus the running sum is each phase's end on the wall clock: a bench on another
machine lines them up with the time it sent a signal.

``t0``, the process start, comes from ``/proc/self/stat`` (Linux; clock-tick precision,
10 ms); elsewhere it is the moment ``spotrun_trainer`` was imported, and ``start`` is 0.
A worker that spotrun's launcher started (launcher.py: the pod's process, which then
starts torchrun) counts from the launcher's start instead (``SPOTRUN_LAUNCH_T0``), so
``start`` includes torchrun's own start-up: the time a restarted pod really spends.

Rank 0 logs the phases once per process, after the first step, as one line that
:func:`format_line` writes and :func:`parse_line` reads back (docs/trainer.md; one line,
folded here)::

    spotrun: restart phases start=0.412s imports=2.100s process_group=0.300s load=0.520s
    first_step=0.200s total=3.532s t0=1790000000.123 resumed_from=120 attempt=3

This module imports neither torch nor pydantic: the marks cost nothing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import spotrun_trainer

ENV_LAUNCH_T0 = "SPOTRUN_LAUNCH_T0"  # the launcher's process start, epoch seconds
PHASES = ("start", "imports", "process_group", "load", "first_step")
LINE_PREFIX = "spotrun: restart phases"

_NUM = r"(\d+\.\d+)"
LINE_RE = re.compile(
    re.escape(LINE_PREFIX)
    + "".join(rf" {name}={_NUM}s" for name in PHASES)
    + rf" total={_NUM}s t0={_NUM} resumed_from=(\d+|none) attempt=(\d+|none)"
)


@dataclass(frozen=True)
class RestartPhases:
    """One attempt's phases: seconds of each (in ``PHASES`` order) from ``t0``."""

    t0: float
    seconds: dict[str, float]
    resumed_from: int | None = None  # the checkpoint's step; None: started from scratch
    attempt: int | None = None  # SPOTRUN_ATTEMPT; None outside a TrainingRun

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def ends(self) -> dict[str, float]:
        """Each phase's end, in epoch seconds."""
        out, at = {}, self.t0
        for name in PHASES:
            at += self.seconds[name]
            out[name] = at
        return out

    def to_progress(self) -> dict[str, float]:
        """``status.progress.restartPhases``: the seconds of each phase, and ``t0``."""
        keys = {"process_group": "processGroup", "first_step": "firstStep"}
        out = {keys.get(n, n): round(self.seconds[n], 3) for n in PHASES}
        out["t0"] = round(self.t0, 3)
        return out


def format_line(p: RestartPhases) -> str:
    """The rank-0 log line (``LINE_PREFIX``, then key=value fields in a fixed order)."""
    phases = " ".join(f"{n}={p.seconds[n]:.3f}s" for n in PHASES)
    resumed = "none" if p.resumed_from is None else str(p.resumed_from)
    attempt = "none" if p.attempt is None else str(p.attempt)
    return (
        f"{LINE_PREFIX} {phases} total={p.total:.3f}s t0={p.t0:.3f} "
        f"resumed_from={resumed} attempt={attempt}"
    )


def parse_lines(text: str) -> list[RestartPhases]:
    """Every phase line in ``text`` (a log: anything may precede the prefix on a line)."""
    out = []
    for m in LINE_RE.finditer(text):
        values = m.groups()
        seconds = {n: float(v) for n, v in zip(PHASES, values, strict=False)}
        t0, resumed, attempt = values[len(PHASES) + 1 :]
        out.append(
            RestartPhases(
                float(t0),
                seconds,
                None if resumed == "none" else int(resumed),
                None if attempt == "none" else int(attempt),
            )
        )
    return out


def parse_line(text: str) -> RestartPhases | None:
    """The first phase line in ``text``; None when there is none."""
    found = parse_lines(text)
    return found[0] if found else None


def process_start_time() -> float | None:
    """This process's start in epoch seconds, from ``/proc/self/stat`` (its start in clock
    ticks since boot) against the boot-time clock; None where that is not available."""
    try:
        stat = open("/proc/self/stat", encoding="ascii").read()  # noqa: SIM115
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after comm's ")"
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        wall = time.time()
        return wall - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class PhaseClock:
    """The marks of this process (``CLOCK``); the first mark of each phase counts."""

    t0: float
    marks: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    reported: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark(self, phase: str, at: float | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown restart phase {phase!r}")
        with self._lock:
            self.marks.setdefault(phase, time.time() if at is None else at)

    def loaded(self, step: int | None) -> None:
        """The checkpoint search is done: ``step`` was loaded (None: none was found)."""
        with self._lock:
            if "load" not in self.marks:
                self.resumed_from = step
        self.mark("load")

    def take(self, attempt: int | None) -> RestartPhases | None:
        """The phases, once per process (marks ``first_step`` if not yet); None after."""
        self.mark("first_step")
        with self._lock:
            if self.reported:
                return None
            self.reported = True
            seconds, previous = {}, self.t0
            for name in PHASES:
                end = max(previous, self.marks.get(name, previous))
                seconds[name], previous = end - (previous), end
            return RestartPhases(self.t0, seconds, self.resumed_from, attempt)


def launch_t0(env: Mapping[str, str]) -> float | None:
    """The launcher's start that ``ENV_LAUNCH_T0`` carries; None when unset or unreadable."""
    try:
        value = float(env.get(ENV_LAUNCH_T0, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def _new_clock() -> PhaseClock:
    # getattr: a process that imports this module while the package is still initialising
    # (a spawned child unpickling its target) has no IMPORTED_AT yet; then it is now.
    imported = getattr(spotrun_trainer, "IMPORTED_AT", None) or time.time()
    starts = [t for t in (process_start_time(), launch_t0(os.environ)) if t is not None]
    clock = PhaseClock(min([imported, *starts]))
    clock.mark("start", imported)
    return clock


CLOCK = _new_clock()
