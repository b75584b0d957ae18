"""What a recovery on the real nodes is made of, observed (the pure part of
``real_recovery``): boundaries from the pods' own state, the kubelet's pull events and the
master's log (read with the kubelet's timestamps), and their phases.

==============  ==========================================================================
boundary        observed as
==============  ==========================================================================
``signal``      the injection starts (the bench's clock, UTC)
``detect``      spotrun: the run's attempt has an outcome (``status.attempts[n]``);
                Kubeflow: a pod of the job is deleted, ends, or restarts a container
``bound``       every pod of the next gang is bound to a node (spotrun: attempt n+1's
                pods; Kubeflow: the job's pods, each created or restarted after the signal)
``running``     every container of the next gang runs (its ``startedAt``)
``loaded``      the master's log says ``resumed from ... (step N ...)`` after the signal
``trained``     the master's log shows its first ``step N: loss`` line after that
==============  ==========================================================================

Each boundary is taken as ``max(previous, observed)``; the phases are ``detect``,
``capacity`` (detect -> bound, the gang stopped and the next one placed: a spare, a free
node or the group's replacement after its delay), ``pull`` (the longest image pull of the
next gang, from the kubelet's ``Pulled`` event: 0 when the image was present), ``start``
(bound -> running, less the pull), ``load`` (running -> loaded: process start, imports,
process group, checkpoint load) and ``first_step`` (loaded -> trained).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spotrun_trainer import phases

RESUMED = re.compile(r"resumed from .*\(step (\d+)[,)]")
STEP = re.compile(r"\bstep (\d+): loss ")
# The kubelet's event: 'Successfully pulled image "x" in 1m2.345s (1m2.345s including
# waiting). Image size: ...' (pkg/kubelet/images/image_manager.go)
PULLED = re.compile(r'Successfully pulled image "[^"]+" in ([0-9hms.µ]+)')
_GO_PART = re.compile(r"([0-9.]+)(h|ms|µs|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6}
PHASES = ("detect", "capacity", "pull", "start", "load", "first_step")


def go_duration(text: str) -> float:
    """Seconds of a Go ``time.Duration`` string such as ``1m2.5s``."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def pull_seconds(event_messages: Iterable[str]) -> float:
    """The longest pull the events report (0: every image was present)."""
    pulls = [go_duration(m.group(1)) for msg in event_messages if (m := PULLED.search(msg))]
    return max(pulls, default=0.0)


def stamped(line: str) -> tuple[dt.datetime, str] | None:
    """A log line read with ``timestamps=True``: (the kubelet's time, the text)."""
    stamp, _, text = line.partition(" ")
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")), text
    except ValueError:
        return None


@dataclass(frozen=True)
class LogMarks:
    """The master's resume and first step after ``since``, from its timestamped log."""

    loaded: dt.datetime | None = None
    resumed_step: int | None = None
    trained: dt.datetime | None = None
    last_step: int | None = None  # the newest step line at or before ``since``


def log_marks(lines: Iterable[str], since: dt.datetime) -> LogMarks:
    loaded = trained = None
    resumed = last = None
    for raw in lines:
        got = stamped(raw)
        if got is None:
            continue
        at, text = got
        step = STEP.search(text)
        if at <= since:
            last = int(step.group(1)) if step else last
            continue
        found = RESUMED.search(text)
        if found and loaded is None:
            loaded, resumed = at, int(found.group(1))
        elif step and loaded is not None and trained is None:
            trained = at
    return LogMarks(loaded, resumed, trained, last)


@dataclass
class Boundaries:
    signal: dt.datetime
    detect: dt.datetime | None = None
    bound: dt.datetime | None = None
    running: dt.datetime | None = None
    loaded: dt.datetime | None = None
    trained: dt.datetime | None = None
    pull_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # The next gang's master's own account from process start to its first step
    # (spotrun_trainer.phases: start, imports, process_group, load, first_step).
    trainer_phases: dict[str, float] = field(default_factory=dict)
    # spotrun_elastic: what growing back cost (see grow_back); empty otherwise.
    grow_back: dict[str, float] = field(default_factory=dict)
    # The machine's CPU seconds by part from ``bound`` to ``trained`` (real_recovery_cpu).
    cpu: dict[str, float] = field(default_factory=dict)
    # rebalance: the old gang's last step line (it trains on after the recommendation); the
    # case's figure is then the pause, this -> the next gang's first step.
    paused: dt.datetime | None = None

    def complete(self) -> bool:
        return self.trained is not None

    def phases(self) -> dict[str, float]:
        """Seconds per phase, each boundary no earlier than the one before."""
        order = (self.detect, self.bound, self.running, self.loaded, self.trained)
        if any(b is None for b in order):
            return {}
        times: list[dt.datetime] = [self.signal]
        for b in order:
            assert b is not None
            times.append(max(times[-1], b))
        d = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        start = max(0.0, d[2] - self.pull_s)
        pull = d[2] - start
        return dict(zip(PHASES, (d[0], d[1], pull, start, d[3], d[4]), strict=True))

    def total(self) -> float | None:
        p = self.phases()
        if p and self.paused is not None and self.trained is not None:
            return round((self.trained - self.paused).total_seconds(), 1)
        return round(sum(p.values()), 1) if p else None


def newest(times: Iterable[dt.datetime | None]) -> dt.datetime | None:
    """The latest of ``times`` when none is missing (every pod reached the boundary)."""
    got = list(times)
    if not got or any(t is None for t in got):
        return None
    return max(t for t in got if t is not None)


def median(values: Iterable[float | None]) -> float | None:
    got = sorted(v for v in values if v is not None)
    if not got:
        return None
    mid = len(got) // 2
    return got[mid] if len(got) % 2 else (got[mid - 1] + got[mid]) / 2


def median_phases(runs: Iterable[Mapping[str, float]]) -> dict[str, float]:
    done = [r for r in runs if r]
    return {p: round(median(r.get(p) for r in done) or 0.0, 1) for p in PHASES} if done else {}


def trainer_phases(lines: Iterable[str], since: dt.datetime) -> dict[str, float]:
    """The restart-phase line the master logged after ``since`` (seconds per phase)."""
    for raw in lines:
        got = stamped(raw)
        if got is None or got[0] <= since:
            continue
        found = phases.parse_line(got[1])
        if found is not None:
            return {k: round(v, 2) for k, v in found.seconds.items()}
    return {}


def last_step(lines: Iterable[str]) -> tuple[dt.datetime, int] | None:
    """The newest ``step N: loss`` line of a timestamped log: (when, N)."""
    found = None
    for raw in lines:
        got = stamped(raw)
        step = STEP.search(got[1]) if got else None
        if got and step:
            found = (got[0], int(step.group(1)))
    return found


def grow_back(
    signal: dt.datetime, shrunk: Iterable[str], grown: Iterable[str]
) -> dict[str, float] | None:
    """What growing back cost (``spec.elasticity``): from the shrunk gang's master's last
    log and the grown gang's master's log, ``full_s`` (signal -> the whole gang's first
    step), ``pause_s`` (the shrunk gang's last step -> that first step: no training in
    between) and ``lost_steps`` (steps the shrunk gang trained that the grown one
    repeats). None until the grown gang trained."""
    last = last_step(shrunk)
    if last is None:
        return None
    marks = log_marks(grown, last[0])
    if marks.trained is None or marks.resumed_step is None:
        return None
    return {
        "full_s": round((marks.trained - signal).total_seconds(), 1),
        "pause_s": round((marks.trained - last[0]).total_seconds(), 1),
        "lost_steps": float(max(0, last[1] - marks.resumed_step)),
    }


# --- the pods' own state (kubernetes client objects) ---------------------------------------
def restarts(pod: Any) -> int:
    """Container restarts of ``pod`` (a client object), all containers."""
    return sum(c.restart_count or 0 for c in pod.status.container_statuses or [])


def terminated(pod: Any) -> bool:
    return any(c.state and c.state.terminated for c in pod.status.container_statuses or [])


def running_since(pod: Any, since: dt.datetime) -> bool:
    cs = pod.status.container_statuses or []
    return bool(cs) and all(
        c.state and c.state.running and c.state.running.started_at >= since for c in cs
    )


def next_gang_pod(pod: Any, before: dict[str, int], since: dt.datetime, kubeflow: bool) -> bool:
    """A pod of the next gang: spotrun's next attempt, or for Kubeflow a pod created or
    restarted since the signal (a rank left running alone cannot rejoin a new rendezvous:
    the gang trains again only once every pod restarted)."""
    if not kubeflow:
        return pod.metadata.uid not in before
    if pod.metadata.deletion_timestamp:
        return False
    return pod.metadata.uid not in before or restarts(pod) > before[pod.metadata.uid]
