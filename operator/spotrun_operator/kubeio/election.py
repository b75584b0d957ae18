"""Leader election on a ``coordination.k8s.io/v1`` Lease: the rules, pure.

The rules are client-go's (``k8s.io/client-go/tools/leaderelection/leaderelection.go``,
``tryAcquireOrRenew``, ``release``, ``isLeaseValid``), the Kubernetes convention that
controller-runtime, kube-scheduler and kube-controller-manager follow:

* A candidate trusts no timestamp written in the Lease (another host's clock). It notes,
  on its own monotonic clock, when it last saw the record *change*; the lease is live
  until that moment plus ``leaseDurationSeconds`` (client-go ``setObservedRecord``,
  ``isLeaseValid``). So a dead leader's lease is taken over one lease duration after the
  standby last saw it renewed, whatever the clocks say.
* No Lease: create it, holding it (``Lock.Create``).
* A live Lease held by someone else: wait (``lock is held by %v and has not yet expired``).
* Held by us: renew (``renewTime`` now; ``acquireTime`` and ``leaseTransitions`` kept).
* Expired, or released (``holderIdentity`` empty): take it, ``acquireTime`` now and
  ``leaseTransitions`` + 1.
* Every write is a compare-and-swap: an update carries the ``resourceVersion`` read, so
  of two standbys racing for an expired lease exactly one wins (the other gets 409).
* The leader gives up when it cannot renew for ``renewDeadline`` (``renew``: a
  ``PollImmediateUntil`` bounded by ``RenewDeadline``); ``renewDeadline`` <
  ``leaseDuration``, so it stops before anyone else may start.
* Release (``ReleaseOnCancel``): ``holderIdentity`` empty, ``leaseDurationSeconds`` 1,
  ``leaseTransitions`` kept, so a standby takes over at its next retry.

Times here are plain floats of the caller's monotonic clock; wall times are the strings
written to the Lease (``MicroTime``), passed in. :mod:`leader` does the I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# client-go JitterFactor: the acquire loop waits retryPeriod * [1, 1.2).
JITTER_FACTOR = 1.2
LEASE_API_VERSION = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class ElectionConfig:
    """client-go's defaults (LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s)."""

    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    def problem(self) -> str | None:
        """What client-go's ``NewLeaderElector`` would refuse, None when valid."""
        if min(self.lease_seconds, self.renew_deadline_seconds, self.retry_period_seconds) <= 0:
            return "lease duration, renew deadline and retry period must be greater than zero"
        if self.lease_seconds <= self.renew_deadline_seconds:
            return "the lease duration must be greater than the renew deadline"
        if self.renew_deadline_seconds <= JITTER_FACTOR * self.retry_period_seconds:
            return "the renew deadline must be greater than the retry period * 1.2"
        return None


@dataclass(frozen=True)
class LeaseRecord:
    """The election record a Lease's spec holds (client-go ``LeaderElectionRecord``)."""

    holder: str = ""
    lease_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


@dataclass(frozen=True)
class Seen:
    """The record as this candidate last saw it, the Lease's resourceVersion then, and
    when (its own monotonic clock) it last saw the record change."""

    record: LeaseRecord
    resource_version: str
    at: float

    def live(self, now: float) -> bool:
        """client-go ``isLeaseValid``: observedTime + leaseDurationSeconds > now."""
        return self.at + self.record.lease_seconds > now


def note_read(prev: Seen | None, record: LeaseRecord, resource_version: str, now: float) -> Seen:
    """What a read tells: the observed time moves only when the record changed (client-go
    compares the raw record, ``observedRawRecord``)."""
    if prev is not None and prev.record == record:
        return Seen(record, resource_version, prev.at)
    return Seen(record, resource_version, now)


@dataclass(frozen=True)
class Create:
    """No Lease yet: create it, holding it."""

    record: LeaseRecord


@dataclass(frozen=True)
class Update:
    """Replace the Lease's spec, on condition that its resourceVersion is still this one.
    ``acquired``: a new term (a takeover, or after a release), not a renewal."""

    record: LeaseRecord
    resource_version: str
    acquired: bool


@dataclass(frozen=True)
class Wait:
    """Someone else holds a live lease; it expires (for us) at ``until`` unless renewed."""

    holder: str
    until: float


Step = Create | Update | Wait


def next_step(
    current: Seen | None, identity: str, now: float, wall: str, cfg: ElectionConfig
) -> Step:
    """One ``tryAcquireOrRenew``: what this candidate does given the Lease as it last read
    it (``current``; None when the Lease does not exist), the monotonic ``now`` and the
    wall time ``wall`` to write."""
    mine = LeaseRecord(identity, cfg.lease_seconds, wall, wall, 0)
    if current is None:
        return Create(mine)
    old = current.record
    if old.holder and old.holder != identity and current.live(now):
        return Wait(old.holder, current.at + old.lease_seconds)
    if old.holder == identity:
        renewed = LeaseRecord(identity, cfg.lease_seconds, old.acquire_time, wall, old.transitions)
        return Update(renewed, current.resource_version, acquired=False)
    taken = LeaseRecord(identity, cfg.lease_seconds, wall, wall, old.transitions + 1)
    return Update(taken, current.resource_version, acquired=True)


def renew_lost(round_started: float, now: float, cfg: ElectionConfig) -> bool:
    """A renewal round that has not succeeded within ``renewDeadline`` loses the lease:
    the leader must stop acting (client-go ``renew`` returns, OnStoppedLeading)."""
    return now - round_started >= cfg.renew_deadline_seconds


def released(record: LeaseRecord, wall: str) -> LeaseRecord:
    """client-go ``release``: no holder, a 1 s lease, the transitions count kept."""
    return LeaseRecord("", 1, wall, wall, record.transitions)


def micro_time(t: dt.datetime) -> str:
    """A Kubernetes ``MicroTime`` (RFC 3339, microseconds, UTC)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    namespace: str, name: str, record: LeaseRecord, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Lease to create (no ``base``) or to put in place of ``base``, the Lease as read:
    its metadata (``resourceVersion`` included, which makes the replace a compare-and-swap)
    and any spec field the record does not hold are kept."""
    if base is None:
        return {
            "apiVersion": LEASE_API_VERSION,
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": record.spec(),
        }
    return {**base, "spec": {**(base.get("spec") or {}), **record.spec()}}
