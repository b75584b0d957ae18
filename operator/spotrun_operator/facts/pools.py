"""Interruption rate per capacity pool, and the checkpoint interval chosen from it (pure).

A capacity pool is (instance type, zone, capacity type): what EC2 reclaims together. The
operator learns each pool's rate from its own history, the finished attempts of every run
it knows (``status.attempts``): a node of an attempt exposes its pool for the attempt's
running time (startedAt to endedAt), and a preempted attempt counts one interruption in
the pool of the node behind it (its ``zone``; the first of ``zones`` when unknown). The
rate of a pool is interruptions / node-seconds; a gang is lost when any of its nodes is,
so its MTBF is 1 / (sum of its nodes' pool rates).

``checkpoint.interval: auto`` then gives an attempt the Young/Daly interval
sqrt(2 * C * M), with C the run's measured save stall (``status.progress.
checkpointStallSeconds``; the operator's ``checkpoint_cost_seconds`` until the trainer
reported one) and M the gang MTBF from the pools (the run's own preemptions when the
pools saw none, then the default interval), clamped to [60 s, 3600 s].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from spotrun_api.checkpoint_interval import (
    MAX_AUTO_INTERVAL_SECONDS,
    MIN_AUTO_INTERVAL_SECONDS,
)
from spotrun_api.checkpoint_interval import young_daly as young_daly  # re-exported
from spotrun_api.contract import DEFAULT_CHECKPOINT_INTERVAL_SECONDS
from spotrun_api.enums import Outcome
from spotrun_api.status import Attempt
from spotrun_operator.facts.common import parse_duration, parse_time

# young_daly and its bounds are shared with the kubectl plugin's estimate (spotrun_api).
MIN_INTERVAL_SECONDS = MIN_AUTO_INTERVAL_SECONDS
MAX_INTERVAL_SECONDS = MAX_AUTO_INTERVAL_SECONDS
ANY_ZONE = ""  # a pool key whose zone is not known yet (a new attempt before scheduling)


class Pool(NamedTuple):
    instance_type: str
    zone: str
    capacity_type: str

    @property
    def label(self) -> str:
        return f"{self.instance_type}/{self.zone or '*'}/{self.capacity_type}"


@dataclass(frozen=True)
class PoolStats:
    interruptions: int = 0
    node_seconds: float = 0.0

    def __add__(self, other: PoolStats) -> PoolStats:
        return PoolStats(
            self.interruptions + other.interruptions, self.node_seconds + other.node_seconds
        )

    def __sub__(self, other: PoolStats) -> PoolStats:
        """What is left once ``other``'s share is taken out (never below zero: durations
        are summed in whole seconds, so nothing is lost to rounding in between)."""
        return PoolStats(
            max(0, self.interruptions - other.interruptions),
            max(0.0, self.node_seconds - other.node_seconds),
        )

    @property
    def rate(self) -> float | None:
        """Interruptions per node-second; None until one interruption was seen."""
        if self.interruptions <= 0 or self.node_seconds <= 0:
            return None
        return self.interruptions / self.node_seconds


PoolTally = Mapping[Pool, PoolStats]


def ran_seconds(entry: Attempt) -> float:
    """How long a finished attempt's gang ran (0 for a live or never-started one)."""
    start, end = parse_time(entry.started_at), parse_time(entry.ended_at)
    if start is None or end is None:
        return 0.0
    return max(0.0, (end - start).total_seconds())


def capacity_of(entry: Attempt) -> str:
    return "on-demand" if entry.capacity_type == "on-demand" else "spot"


def node_pools(entry: Attempt) -> list[Pool]:
    """One pool per node of the attempt (zone unknown: ANY_ZONE); none without a type."""
    if not entry.instance_type:
        return []
    nodes = max(1, entry.nodes or 1)
    zones = list(entry.zones or ())[:nodes]
    zones += [ANY_ZONE] * (nodes - len(zones))
    return [Pool(entry.instance_type, z, capacity_of(entry)) for z in zones]


def attempt_tally(entry: Attempt) -> dict[Pool, PoolStats]:
    """What one finished attempt tells about its pools (empty while it is live)."""
    seconds = ran_seconds(entry)
    pools = node_pools(entry)
    out: dict[Pool, PoolStats] = {}
    if entry.outcome is None or seconds <= 0 or not pools:
        return out
    for p in pools:
        out[p] = out.get(p, PoolStats()) + PoolStats(0, seconds)
    if entry.outcome is Outcome.PREEMPTED:
        zone = entry.zone or pools[0].zone
        hit = Pool(pools[0].instance_type, zone, pools[0].capacity_type)
        out[hit] = out.get(hit, PoolStats()) + PoolStats(1, 0.0)
    return out


def pool_tally(histories: Iterable[Sequence[Attempt]]) -> dict[Pool, PoolStats]:
    """The per-pool tally over the attempt histories of every run."""
    out: dict[Pool, PoolStats] = {}
    for history in histories:
        for entry in history:
            for p, s in attempt_tally(entry).items():
                out[p] = out.get(p, PoolStats()) + s
    return out


def pool_stats(tally: PoolTally, pool: Pool) -> PoolStats:
    """A pool's figures; with ANY_ZONE, the sum over every zone of that type and capacity."""
    if pool.zone != ANY_ZONE:
        return tally.get(pool, PoolStats())
    total = PoolStats()
    for p, s in tally.items():
        if (p.instance_type, p.capacity_type) == (pool.instance_type, pool.capacity_type):
            total = total + s
    return total


def gang_mtbf(tally: PoolTally, pools: Sequence[Pool]) -> float | None:
    """Mean time between interruptions of a gang with a node in each of ``pools``; None
    when none of those pools has seen an interruption."""
    rates = [pool_stats(tally, p).rate for p in pools]
    total = sum(r for r in rates if r is not None)
    return 1.0 / total if total > 0 else None


def own_mtbf(history: Sequence[Attempt]) -> float | None:
    """The run's own MTBF: its running time over its preemptions (None: none yet)."""
    ran = sum(ran_seconds(e) for e in history)
    preempted = sum(1 for e in history if e.outcome is Outcome.PREEMPTED)
    return ran / preempted if preempted and ran > 0 else None


def auto_interval(
    interval: str,
    *,
    history: Sequence[Attempt],
    planned: Sequence[Pool],
    tally: PoolTally,
    stall_seconds: float | None,
    checkpoint_cost_seconds: float,
    default: float = DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
) -> int:
    """The interval given to an attempt planned on ``planned`` (one pool per node). A fixed
    interval is used as written; ``auto`` is Young/Daly from the measured stall (else the
    configured cost) and the pools' MTBF (else the run's own, else ``default`` as is)."""
    if interval != "auto":
        return max(1, round(parse_duration(interval)))
    mtbf = gang_mtbf(tally, planned) or own_mtbf(history)
    if mtbf is None:
        return int(default)
    cost = checkpoint_cost_seconds if stall_seconds is None else stall_seconds
    return young_daly(cost, mtbf)


def planned_pools(
    instance_type: str, zones: Sequence[str] | None, capacity_type: str, nodes: int
) -> list[Pool]:
    """The pools a new attempt will most likely run in: the previous attempt's zones when
    known (ANY_ZONE for the rest), one per node."""
    n = max(1, nodes)
    zs = list(zones or ())[:n]
    zs += [ANY_ZONE] * (n - len(zs))
    return [Pool(instance_type, z, capacity_type) for z in zs]
