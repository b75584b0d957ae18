"""Where the machine's cores went while a recovery's next gang started (the part of
``real_recovery`` that reads the machine, not the cluster).

From the moment every pod of the next gang is bound to a node to its first training step
(the ``bound`` and ``trained`` boundaries of ``real_recovery_watch``), CPU seconds of:

==========================  ================================================================
``machine_busy_s``          the whole machine, every core (``/proc/stat``: all but idle
                            and iowait); ``machine_busy_pct`` of the cores' seconds
``replacement_rank_s``      the next gang's pod(s) on a node the old gang did not use (the
                            replacement's rank: its cgroup ``pod<uid>``)
``survivor_rank_s``         the next gang's pod(s) on a node the old gang used
``replacement_system_s``    the replacement's system cgroup: its containerd, shims, kubelet,
                            device plugin and (lazy nodes) snapshotter, i.e. the pull
``replacement_other_s``     the replacement's other pods (a capacity placeholder)
``survivor_system_s``       the survivors' system cgroups
``other_nodes_s``           every other real node's two cgroups
``rest_s``                  the rest of the machine: the control plane, the registry, the
                            training operator, the bench (busy less every node's cgroups)
==========================  ================================================================

Each real node is two cgroup v1 trees of its own (``node_host``): ``spotrun-<node>`` (the
kubelet's cgroupRoot, every pod) and ``spotrun-<node>-system``; cpuacct charges a child's
time to its parents as it runs, so a node's figure keeps a pod that ended in the window.
On a p4d.24xlarge each rank's node has 96 vCPUs of its own: of these, only the
replacement's rank and the replacement's system share its cores there.
"""

from __future__ import annotations

import bisect
import datetime as dt
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
NODE_PREFIX = "spotrun-"
SYSTEM_SUFFIX = "-system"
MACHINE = "machine"  # the sample's key of the machine's busy seconds
# The pod cgroups below a node's cgroupRoot (kubelet, cgroupfs driver): Guaranteed pods
# directly below kubepods, the others below their QoS class's folder.
POD_GLOBS = ("kubepods/pod*", "kubepods/*/pod*")


def machine_busy_seconds(stat_text: str, hz: int) -> float:
    """Busy CPU seconds of every core since boot, from ``/proc/stat``'s ``cpu`` line: user,
    nice, system, irq, softirq and steal (guest time is inside user and nice)."""
    fields = stat_text.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("not /proc/stat: its first line is the cpu line")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / hz


def _usage(folder: Path) -> float | None:
    try:
        return int((folder / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None  # gone between the listing and the read


def cgroup_seconds(root: Path = CPUACCT) -> dict[str, float]:
    """CPU seconds of each real node's two cgroups (keyed by their names) and of each pod
    below a node's cgroupRoot (keyed ``pod<uid>``)."""
    out: dict[str, float] = {}
    for node in root.glob(NODE_PREFIX + "*"):
        if (used := _usage(node)) is None:
            continue
        out[node.name] = used
        if node.name.endswith(SYSTEM_SUFFIX):
            continue
        for pattern in POD_GLOBS:
            for pod in node.glob(pattern):
                if (used := _usage(pod)) is not None:
                    out[pod.name] = used
    return out


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds
    seconds: Mapping[str, float]  # MACHINE and every cgroup of cgroup_seconds


class Series:
    """Cumulative counters sampled over time; ``at(key, t)`` interpolates linearly, a
    counter first seen after the first sample counts from 0 (its cgroup was made since),
    and one no longer seen keeps its last value (its cgroup went, its time stays)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = sorted(samples, key=lambda s: s.at)
        self.times = [s.at for s in self.samples]

    def at(self, key: str, t: float) -> float:
        points = [(s.at, s.seconds[key]) for s in self.samples if key in s.seconds]
        if not points:
            return 0.0
        if self.samples and points[0][0] > self.samples[0].at:
            points.insert(0, (self._made(key), 0.0))
        times = [p[0] for p in points]
        i = bisect.bisect_left(times, t)
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (t0, v0), (t1, v1) = points[i - 1], points[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1

    def _made(self, key: str) -> float:
        """The last sample before ``key`` was first seen."""
        seen = next(s.at for s in self.samples if key in s.seconds)
        return self.times[bisect.bisect_left(self.times, seen) - 1]

    def delta(self, key: str, start: float, end: float) -> float:
        return self.at(key, end) - self.at(key, start)


def account(
    samples: Sequence[Sample],
    start: dt.datetime,
    end: dt.datetime,
    gang: Mapping[str, str],
    old_nodes: set[str],
    cpus: int,
) -> dict[str, float]:
    """CPU seconds of the window ``start`` -> ``end`` by part (the module's table).
    ``gang``: the next gang's pods, uid -> node; ``old_nodes``: the old gang's nodes."""
    s = Series(samples)
    a, b = start.timestamp(), end.timestamp()
    if not s.samples or s.samples[0].at > a or s.samples[-1].at < b:
        return {}  # the samples do not cover the window
    nodes = {k for smp in s.samples for k in smp.seconds if k.startswith(NODE_PREFIX)}
    names = {k.removesuffix(SYSTEM_SUFFIX) for k in nodes}
    replacements = {NODE_PREFIX + n for n in gang.values() if n not in old_nodes}
    survivors = {NODE_PREFIX + n for n in gang.values() if n in old_nodes}

    def ranks(where: set[str]) -> float:
        return sum(s.delta(f"pod{uid}", a, b) for uid, n in gang.items()
                   if NODE_PREFIX + n in where)  # fmt: skip

    def pods(where: set[str]) -> float:
        return sum(s.delta(n, a, b) for n in where)

    def system(where: set[str]) -> float:
        return sum(s.delta(n + SYSTEM_SUFFIX, a, b) for n in where)

    busy = s.delta(MACHINE, a, b)
    every_node = pods(names) + system(names)
    others = names - replacements - survivors
    parts = {
        "window_s": b - a,
        "machine_busy_s": busy,
        "machine_busy_pct": 100.0 * busy / (cpus * (b - a)) if b > a else 0.0,
        "replacement_rank_s": ranks(replacements),
        "survivor_rank_s": ranks(survivors),
        "replacement_system_s": system(replacements),
        "replacement_other_s": pods(replacements) - ranks(replacements),
        "survivor_system_s": system(survivors),
        "other_nodes_s": pods(others) + system(others),
        "rest_s": busy - every_node,
    }
    return {k: round(v, 1) for k, v in parts.items()}


class Sampler:
    """Samples the machine and every real node's cgroups every ``period`` seconds on a
    thread, until ``stop``."""

    def __init__(self, period: float = 1.0, root: Path = CPUACCT) -> None:
        self.period, self.root = period, root
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._hz = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> Sample:
        seconds = cgroup_seconds(self.root)
        seconds[MACHINE] = machine_busy_seconds(Path("/proc/stat").read_text(), self._hz)
        return Sample(time.time(), seconds)

    def _loop(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(self.period):
                self.samples.append(self.sample())
                return
