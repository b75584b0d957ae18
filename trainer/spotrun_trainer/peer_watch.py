"""What a rank makes of its peers' heartbeats, on its own monotonic clock (pure: no I/O, no
threads; peers.PeerMonitor feeds it and acts on it)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STEP_WINDOW = 100  # steps the median is taken over
LEFT = b"left"  # a rank's beat key once it left cleanly: never a lost peer
STORE_HOST_RANK = 0  # rank 0 hosts the TCPStore (torchrun: node 0's agent does)


@dataclass(frozen=True)
class Lost:
    """A peer (``rank``), or the store when ``rank`` is None, silent for ``quiet`` seconds."""

    rank: int | None
    quiet: float


class PeerWatch:
    """What the beats showed, judged on this rank's own clock (pure; the caller locks).

    Per peer it keeps two bounds of when its current counter value was written: ``upper``,
    the read that first showed it (used for silence, in the peer's favour), and ``lower``,
    the read before (used for "beat after an error", against it)."""

    def __init__(self, peers: Sequence[int], now: float) -> None:
        self.peers = tuple(peers)
        self.values: dict[int, bytes] = {}
        self.upper = dict.fromkeys(self.peers, now)
        self.lower = dict.fromkeys(self.peers, now)
        self.left: set[int] = set()
        self.last_read = now  # the store's last answer

    def saw(self, values: Mapping[int, bytes], now: float) -> None:
        """A successful read at ``now`` (peers whose key does not exist yet are absent)."""
        for rank, value in values.items():
            if value == LEFT:
                self.left.add(rank)
            if value != self.values.get(rank):
                self.values[rank] = value
                self.lower[rank], self.upper[rank] = self.last_read, now
        self.last_read = now

    def silent(self, now: float, limit: float, since: float = -math.inf) -> Lost | None:
        """The store, else the first peer, with no sign of life for more than ``limit``
        seconds, counted from ``since`` at the earliest. A silent store comes first: then
        no peer can be read, and its host is the one gone. Once rank 0 left cleanly, its
        store going away is expected."""
        quiet = now - max(since, self.last_read)
        if STORE_HOST_RANK not in self.left and quiet > limit:
            return Lost(None, quiet)
        for rank in self.peers:
            quiet = now - max(since, self.upper[rank])
            if rank not in self.left and quiet > limit:
                return Lost(rank, quiet)
        return None

    def beat_since(self, since: float) -> bool:
        """Every peer certainly beat after ``since`` (or left)."""
        return all(r in self.left or self.lower[r] > since for r in self.peers)


class StepTimes:
    """The median of the last ``window`` step times: what a peer's silence is measured by."""

    def __init__(self, window: int = STEP_WINDOW) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def add(self, seconds: float) -> None:
        self._times.append(seconds)

    def median(self) -> float | None:
        return statistics.median(self._times) if self._times else None


def peer_limit(floor: float, median_step: float | None, factor: float) -> float:
    """How long a peer may be silent: the floor, or ``factor`` steps when that is longer."""
    return floor if median_step is None else max(floor, factor * median_step)
