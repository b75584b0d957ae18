"""One reconcile loop per TrainingRun, woken by watch events.

Each run has its own asyncio task, so one run is never reconciled twice at once; the
reconcile itself (blocking API calls) runs in a thread pool. Handlers only *wake* loops,
which keeps reaction to a taint or a DisruptionTarget within one round trip. What only
the watch sees (the last state of deleted nodes and pods) is kept in :mod:`memory`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from spotrun_api.status import Attempt
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.config import DEFAULT_WORKERS, OperatorConfig
from spotrun_operator.facts.pools import Pool, PoolStats, PoolTally, pool_tally
from spotrun_operator.judging.verdicts import build_problem
from spotrun_operator.kubeio.apiserver import Refused, raw_template_job
from spotrun_operator.kubeio.event_sink import EventSink
from spotrun_operator.kubeio.kube import Kube
from spotrun_operator.model.plan import Observed, Rejected
from spotrun_operator.money.cost import Price, Prices
from spotrun_operator.telemetry.metrics import Metrics
from spotrun_operator.telemetry.queue_metrics import CacheCollector, QueueMetrics
from spotrun_operator.watching.cache import Cache, CachedReads
from spotrun_operator.watching.initial_sync import Listing, sync_caches
from spotrun_operator.watching.memory import Key, Memory
from spotrun_operator.watching.observe import PriceSource, observe, run_ref

log = logging.getLogger(__name__)
# After a status write conflict: the watch event of the newer run normally wakes the loop
# sooner; this bounds the wait should that event be lost.
CONFLICT_RETRY_SECONDS = 1.0


class PoolHistory:
    """The finished attempts of every run this operator reconciled, for the per-pool
    interruption tally (:mod:`pools`). Fed with each run's ``status.attempts`` as read, so
    it is rebuilt from the runs' status after a restart (every run is reconciled at start)
    and an attempt recorded twice counts once; a deleted run's attempts leave with it.

    The tally is kept up to date run by run (a run's old share out, its new one in): a
    storm changes hundreds of runs' histories, and summing every run's again after each
    one took 28 % of the reconcile threads' samples at 1,100 runs (py-spy, operator_scale)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[Key, tuple[Attempt, ...]] = {}
        self._shares: dict[Key, dict[Pool, PoolStats]] = {}
        self._tally: dict[Pool, PoolStats] = {}

    def record(self, key: Key, attempts: Sequence[Attempt]) -> None:
        done = tuple(e for e in attempts if e.outcome is not None and e.started_at)
        with self._lock:
            if self._runs.get(key, ()) != done:
                self._runs[key] = done
                self._replace_share(key, pool_tally([done]))

    def forget(self, key: Key) -> None:
        with self._lock:
            if self._runs.pop(key, None):
                self._replace_share(key, {})

    def tally(self) -> PoolTally:
        with self._lock:
            return dict(self._tally)

    def _replace_share(self, key: Key, share: dict[Pool, PoolStats]) -> None:
        old = self._shares.pop(key, {})
        if share:
            self._shares[key] = share
        for pool in old.keys() | share.keys():
            total = self._tally.get(pool, PoolStats()) - old.get(pool, PoolStats())
            total = total + share.get(pool, PoolStats())
            if total.interruptions or total.node_seconds > 1e-6:
                self._tally[pool] = total
            else:
                self._tally.pop(pool, None)


def table_prices(_types: Sequence[str]) -> tuple[Mapping[str, Price] | Prices, None]:
    from spotrun_operator.money.cost import DEFAULT_PRICES

    return DEFAULT_PRICES, None


class Runner:
    def __init__(
        self,
        kube: Kube,
        cfg: OperatorConfig,
        metrics: Metrics,
        memory: Memory | None = None,
        prices: PriceSource = table_prices,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.kube = kube
        self.cfg = cfg
        self.metrics = metrics
        self.memory = memory or Memory()
        self.pool_history = PoolHistory()
        self.prices = prices
        # Every read of a reconcile comes from here (fed by kopf's watches, see handlers).
        self.cache = Cache()
        kube.cache = self.cache
        self.reads = CachedReads(self.cache, kube)
        self.queue = QueueMetrics(metrics.registry, workers)
        metrics.registry.register(CacheCollector(self.cache.synced.is_set, self.cache.sizes))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        # Events are queued and written by the sink's own thread, as client-go's recorder
        # does: a reconcile never waits for one.
        self.events = EventSink(kube)
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._wakers: dict[Key, asyncio.Event] = {}
        # Set while this replica may act (always, without leader election); a standby's
        # loops wait on it with their watch-fed knowledge kept warm.
        self.leading = asyncio.Event()
        self.leading.set()
        # Set once every cache holds what its resource had at start (initial_sync): no
        # loop decides before, so the first decision after a start reads complete caches.
        self.synced = asyncio.Event()
        self._sync: asyncio.Task[None] | None = None

    # --- called from kopf handlers (event loop) ------------------------------------
    def start_sync(self, listings: Sequence[Listing]) -> None:
        """List the watched resources and set :attr:`synced` once the caches hold them."""

        def synced() -> None:
            self.cache.synced.set()
            self.synced.set()

        self._sync = asyncio.get_running_loop().create_task(
            sync_caches(listings, self._list_keys, synced), name="initial sync"
        )

    def _list_keys(self, listing: Listing) -> list[tuple[tuple[str, str], str]]:
        return self.kube.list_keys(listing.kind, listing.namespace, listing.labels, listing.fields)

    def ensure(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._wakers[key] = asyncio.Event()
            # An empty context, not a copy of the caller's: kopf's handler context holds
            # the watch event that woke it (its cause, the whole parsed body), and a run's
            # loop lives as long as the run. Copied, ~1 body per run stayed referenced
            # (decoded strings still held at the medium bench's cold start: 7.8 -> 1.1 MiB).
            self._tasks[key] = asyncio.get_running_loop().create_task(
                self._loop(key), name=f"run {namespace}/{name}", context=contextvars.Context()
            )
        self.wake(namespace, name)

    def wake(self, namespace: str, name: str) -> None:
        waker = self._wakers.get((namespace, name))
        if waker is not None:
            waker.set()

    def forget(self, namespace: str, name: str) -> None:
        task = self._tasks.pop((namespace, name), None)
        self._wakers.pop((namespace, name), None)
        if task is not None:
            task.cancel()
        self.memory.forget_run(namespace, name)
        self.pool_history.forget((namespace, name))
        self.metrics.observe_run(namespace, name, None, None)

    async def shutdown(self) -> None:
        tasks = [*self._tasks.values(), *([self._sync] if self._sync else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.events.shutdown)

    async def _loop(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        waker = self._wakers[key]
        failures = 0
        await self.synced.wait()
        while True:
            await self.leading.wait()
            waker.clear()
            queued = self.queue.queued()
            try:
                delay = await loop.run_in_executor(self.pool, self.reconcile, *key, queued)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                self.metrics.reconcile_errors.inc()
                delay = min(60.0, 0.5 * 2**failures)
                log.exception("reconcile of %s/%s failed; retrying in %.1fs", *key, delay)
            if delay is None:  # the run is gone
                self._tasks.pop(key, None)
                self._wakers.pop(key, None)
                return
            try:
                await asyncio.wait_for(waker.wait(), timeout=delay)
                # Coalesce a burst of watch events (a drain touches every pod at once).
                await asyncio.sleep(0.05)
            except TimeoutError:
                pass

    # --- one reconcile (worker thread) ---------------------------------------------
    def reconcile(self, namespace: str, name: str, queued: float | None = None) -> float | None:
        """Observe, decide, write status, act. Returns the delay until the next look, or
        None when the run no longer exists. ``queued``: when the run was woken."""
        result = "error"
        with self.queue.working(time.monotonic() if queued is None else queued):
            started = time.monotonic()
            try:
                delay, result = self._reconcile_cached(namespace, name)
                return delay
            finally:
                self.queue.finished(result)
                self.metrics.reconcile_duration.labels(result=result).observe(
                    time.monotonic() - started
                )

    def _reconcile_cached(self, namespace: str, name: str) -> tuple[float | None, str]:
        """(delay, result) of reconciling the run as the cache holds it."""
        for _ in range(5):
            run = self.cache.runs.get(namespace, name)
            if run is None:
                self.metrics.observe_run(namespace, name, None, None)
                return None, "gone"
            delay, result = self._reconcile_once(run)
            if delay is not None:
                return delay, result
        return 0.5, "acted"

    def _reconcile_once(self, run: Mapping[str, Any]) -> tuple[float | None, str]:
        """One observe-decide-write-act pass over ``run`` as read, and what it came to;
        delay None: look again at once (the apiserver refused what the spec builds)."""
        ref = run_ref(run)
        rejected = self.memory.rejection(run)
        obs = self._observe(run, rejected)
        self.pool_history.record((ref.namespace, ref.name), obs.status.attempts or ())
        tally = self.pool_history.tally()
        obs = replace(obs, pools=tally)
        self.metrics.observe_pools(tally)
        if rejected is None and obs.spec is not None:
            problem = build_problem(ref, obs.spec)
            if problem is not None:
                # Let the apiserver name the field: a dry run of the template as written.
                fallback = Rejected("TrainingRun", f"{ref.name} spec.podTemplate", problem)
                self.memory.reject(run, self.kube.refusal(raw_template_job(run)) or fallback)
                return None, "acted"
        d = decide(obs, self.cfg)
        if d.status is not None:
            rv = str(run["metadata"]["resourceVersion"])
            if not self.kube.patch_run_status(ref.namespace, ref.name, rv, d.status):
                # Someone (the trainer) wrote since the cached read: look again once the
                # watch brings the newer run (its event wakes this loop before the delay).
                return CONFLICT_RETRY_SECONDS, "conflict"
        self.metrics.record(d.metrics)
        for ev in d.events:
            if ev.key is None or self.memory.first_time(ev.key):
                self.events.record(ref, ev)
        try:
            self.kube.execute(ref.namespace, d.actions)
        except Refused as exc:
            # A verdict on the spec, not a transient error: decide() makes it InvalidSpec.
            self.memory.reject(run, exc.rejected)
            return None, "acted"
        self.metrics.observe_run(ref.namespace, ref.name, d.phase, d.checkpoint_time, d.gauges)
        for ev in d.events:
            log.info("%s/%s %s: %s", ref.namespace, ref.name, ev.reason, ev.message)
        acted = d.status is not None or d.actions or d.events
        return d.requeue_after, "acted" if acted else "unchanged"

    def _observe(self, run: Mapping[str, Any], rejected: Rejected | None) -> Observed:
        ns, name = run["metadata"]["namespace"], run["metadata"]["name"]
        return observe(
            self.reads,
            run,
            remembered_nodes=self.memory.nodes(),
            seen_pods=self.memory.seen_pods(ns, name),
            interrupted_nodes=self.memory.interrupted_nodes(),
            rand=random.random(),
            price_source=self.prices,
            rejected=rejected,
        )
