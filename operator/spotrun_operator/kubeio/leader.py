"""Leader election for two (or more) operator replicas: the one that holds a
``coordination.k8s.io/v1`` Lease acts, the others keep their watches and memory warm and
wait (``Runner.leading``). The rules are :mod:`election` (client-go's, pure); this module
runs them: reads and writes the Lease through :class:`leases.Leases`, sets and clears the
leading flag, and wires both into kopf's event loop.

Why not ``kubernetes.leaderelection`` (the official client's port): its ``LeaderElection``
runs on a thread of its own with blocking ``time.sleep`` loops and no way to stop it, so
it cannot release the Lease on SIGTERM (client-go ``ReleaseOnCancel``); it never writes
``leaseTransitions``; its ``LeaseLock`` talks through the client's global default
configuration rather than the operator's ``ApiClient``; and a renewal that hangs in a
request is not bounded by the renew deadline. Its semantics are the same client-go rules,
which :mod:`election` transcribes.

Losing a held lease (no renewal within ``renewDeadline``) ends the process at once with
exit status 1 (controller-runtime: "leader election lost"): a stale leader must not
write, and a reconcile already in flight in a worker thread cannot be stopped otherwise.
On SIGTERM (kopf's cleanup) the leader stops starting reconciles, waits for those in
flight, and releases the Lease, so the standby takes over at its next retry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import secrets
import socket
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from os import _exit as exit_now  # no cleanup, no thread joins: nothing else may run
from typing import Any, Protocol

import kopf

from spotrun_operator.kubeio.election import (
    JITTER_FACTOR,
    Create,
    ElectionConfig,
    LeaseRecord,
    Seen,
    Update,
    Wait,
    lease_body,
    micro_time,
    next_step,
    note_read,
    released,
    renew_lost,
)

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class LeaseStore(Protocol):
    """The Lease calls (:class:`kube.Kube` has them)."""

    def get_lease(self, namespace: str, name: str, timeout: float) -> Obj | None: ...
    def create_lease(self, body: Mapping[str, Any], timeout: float) -> Obj | None: ...
    def replace_lease(self, body: Mapping[str, Any], timeout: float) -> Obj | None: ...


def identity() -> str:
    """This process's name in the Lease: the pod's name (or the host's) and a random
    suffix, so that a restarted container, or two processes on one host, never pass for
    each other (controller-runtime: hostname + "_" + a UUID)."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


def default_namespace() -> str:
    return os.environ.get("POD_NAMESPACE") or "default"


def _lost() -> None:
    """controller-runtime's behaviour: log, and exit non-zero at once."""
    log.error("leader election lost: exiting")
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    exit_now(1)


def _wall() -> str:
    return micro_time(dt.datetime.now(dt.UTC))


class Elector:
    """One candidate. :meth:`run` acquires the Lease (retrying every retry period), then
    sets ``leading`` and renews until it fails for a renew deadline, then clears
    ``leading`` and calls ``on_lost`` (by default: exit 1)."""

    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str,
        ident: str,
        cfg: ElectionConfig,
        leading: asyncio.Event,
        on_status: Callable[[bool], None] = lambda _: None,
        on_lost: Callable[[], None] = _lost,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = _wall,
    ) -> None:
        problem = cfg.problem()
        if problem:
            raise ValueError(problem)
        self.store = store
        self.namespace = namespace
        self.name = name
        self.identity = ident
        self.cfg = cfg
        self.leading = leading
        self.on_status = on_status
        self.on_lost = on_lost
        self.clock = clock
        self.wall = wall
        self.acquired_at: float | None = None  # clock() when this replica took the lease
        # Read and written by the one election thread only (and read for logs).
        self._seen: Seen | None = None
        self._lease: Obj | None = None
        self._reported: str | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leader-election")
        self._task: asyncio.Task[None] | None = None

    @property
    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    def is_leader(self) -> bool:
        return self._seen is not None and self._seen.record.holder == self.identity

    # --- one tryAcquireOrRenew (election thread) ------------------------------------
    def try_acquire_or_renew(self, timeout: float) -> bool:
        """True when this candidate holds the Lease after the call."""
        seen, lease = self._seen, self._lease
        if seen is not None and lease is not None and self.is_leader() and seen.live(self.clock()):
            # client-go's fast path: the leader renews from the Lease it last wrote; a
            # conflict (someone else wrote it) falls back to reading it.
            record = LeaseRecord(
                self.identity,
                self.cfg.lease_seconds,
                seen.record.acquire_time,
                self.wall(),
                seen.record.transitions,
            )
            if self._replace(record, lease, timeout):
                return True
        lease = self.store.get_lease(self.namespace, self.name, timeout)
        now = self.clock()
        if lease is not None:
            rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            self._seen = note_read(self._seen, LeaseRecord.of(lease), rv, now)
            self._lease = lease
            self._report()
        current = self._seen if lease is not None else None
        step = next_step(current, self.identity, now, self.wall(), self.cfg)
        if isinstance(step, Wait):
            return False
        if isinstance(step, Create):
            body = lease_body(self.namespace, self.name, step.record)
            return self._write(self.store.create_lease, body, timeout)
        assert isinstance(step, Update) and lease is not None
        if step.acquired:
            log.info(
                "leader election: taking over lease %s (was %r, transitions %d)",
                self.describe,
                lease.get("spec", {}).get("holderIdentity") or "",
                step.record.transitions,
            )
        return self._replace(step.record, lease, timeout)

    def _replace(self, record: LeaseRecord, lease: Mapping[str, Any], timeout: float) -> bool:
        """Put ``record`` in place of ``lease`` as read (compare-and-swap)."""
        body = lease_body(self.namespace, self.name, record, lease)
        return self._write(self.store.replace_lease, body, timeout)

    def _write(
        self, call: Callable[[Mapping[str, Any], float], Obj | None], body: Obj, timeout: float
    ) -> bool:
        written = call(body, timeout)
        if written is None:
            return False
        rv = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self._seen = Seen(LeaseRecord.of(written), rv, self.clock())
        self._lease = written
        self._report()
        return True

    def _report(self) -> None:
        holder = self._seen.record.holder if self._seen else ""
        if holder != self._reported:
            self._reported = holder
            log.info("leader election: lease %s is held by %r", self.describe, holder)

    def release(self, timeout: float) -> bool:
        """client-go ``release``: give the Lease up if this candidate holds it."""
        if not self.is_leader() or self._seen is None or self._lease is None:
            return True
        record = released(self._seen.record, self.wall())
        if self._replace(record, self._lease, timeout):
            log.info("leader election: released lease %s", self.describe)
            return True
        log.warning("leader election: lease %s changed meanwhile; not released", self.describe)
        return False

    # --- the loop (event loop) ------------------------------------------------------
    async def _attempt(self, timeout: float) -> bool:
        """One try in the election thread, bounded by ``timeout`` (a hung request is
        given up on; the thread finishes it in the background)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._thread, self.try_acquire_or_renew, max(0.5, timeout))
        try:
            return await asyncio.wait_for(fut, timeout=max(0.5, timeout))
        except TimeoutError:
            log.warning("leader election: no answer about lease %s in time", self.describe)
            return False
        except Exception as exc:  # the API is unreachable, or refused: retry
            log.warning("leader election: lease %s: %s", self.describe, exc)
            return False

    async def acquire(self) -> None:
        """client-go ``acquire``: try every retryPeriod * [1, 1.2) until it succeeds."""
        log.info("leader election: %s attempting to acquire lease %s", self.identity, self.describe)
        started = self.clock()
        while not await self._attempt(self.cfg.renew_deadline_seconds):
            await asyncio.sleep(self.cfg.retry_period_seconds * random.uniform(1, JITTER_FACTOR))
        self.acquired_at = self.clock()
        log.info(
            "leader election: %s acquired lease %s (waited %.1fs, transitions %d)",
            self.identity,
            self.describe,
            self.acquired_at - started,
            self._seen.record.transitions if self._seen else 0,
        )

    async def renew(self) -> None:
        """client-go ``renew``: every retryPeriod, retry for at most renewDeadline;
        returns when a round fails (the lease is lost)."""
        cfg = self.cfg
        while True:
            await asyncio.sleep(cfg.retry_period_seconds)
            started = self.clock()
            while True:
                left = started + cfg.renew_deadline_seconds - self.clock()
                if await self._attempt(left):
                    break
                if renew_lost(started, self.clock(), cfg):
                    return
                await asyncio.sleep(min(cfg.retry_period_seconds, max(0.0, left)))
                if renew_lost(started, self.clock(), cfg):
                    return

    async def run(self) -> None:
        self.on_status(False)
        await self.acquire()
        self.on_status(True)
        self.leading.set()
        await self.renew()
        self.leading.clear()
        self.on_status(False)
        log.error(
            "leader election: %s could not renew lease %s for %.0fs",
            self.identity,
            self.describe,
            self.cfg.renew_deadline_seconds,
        )
        self.on_lost()

    # --- start and stop (kopf startup / cleanup) ------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="leader election")

    async def stop(self, drain: Callable[[], None], timeout: float) -> None:
        """Stop acting (clear ``leading``), wait for reconciles in flight (``drain``, at
        most ``timeout``), then release the Lease if this replica holds it."""
        self.leading.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        log.info("leader election: stopping; reconciles in flight finish first")
        try:
            await asyncio.wait_for(loop.run_in_executor(None, drain), timeout=timeout)
        except TimeoutError:
            log.warning("leader election: reconciles still running; not releasing the lease")
            return
        log.info("leader election: reconciles done in %.1fs", time.monotonic() - started)
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._thread, self.release, timeout), timeout=timeout
            )
        except Exception as exc:
            log.warning("leader election: lease %s not released: %s", self.describe, exc)
        self.on_status(False)
        self._thread.shutdown(wait=False)


def register(
    registry: kopf.OperatorRegistry,
    elector: Elector,
    drain: Callable[[], None],
    timeout: float = 10.0,
) -> None:
    """Run ``elector`` in kopf's event loop from start-up; on shutdown stop acting, wait
    for reconciles in flight (``drain``) and release the Lease."""

    @kopf.on.startup(registry=registry)
    async def start_leader_election(**_: Any) -> None:
        elector.start()

    @kopf.on.cleanup(registry=registry)
    async def release_leader_election(**_: Any) -> None:
        await elector.stop(drain, timeout)
