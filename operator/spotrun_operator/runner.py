"""One reconcile loop per TrainingRun, woken by watch events, plus what only the watch
sees (the last state of deleted nodes and pods).

Each run has its own asyncio task, so one run is never reconciled twice at once; the
reconcile itself (blocking API calls) runs in a thread pool. Handlers only *wake* loops,
which keeps reaction to a taint or a DisruptionTarget within one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from spotrun_operator.config import OperatorConfig
from spotrun_operator.cost import Price, Prices
from spotrun_operator.kube import Kube
from spotrun_operator.metrics import Metrics
from spotrun_operator.observe import observe, run_ref
from spotrun_operator.reconcile import decide
from spotrun_operator.signals import INTERRUPTION_TAINTS, NodeInfo, node_info

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)
# Prices for some instance types, and the PricingAvailable condition (None: not priced by AWS).
PriceSource = Callable[
    [Sequence[str]], tuple[Mapping[str, Price] | Prices, Mapping[str, str] | None]
]


@dataclass(frozen=True)
class _Seen:
    at: float
    node: NodeInfo


class Memory:
    """Thread-safe knowledge from the watch streams, bounded in time and size."""

    def __init__(self, ttl_seconds: float = 3600.0, max_items: int = 10000) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _Seen] = {}
        self._pods: dict[Key, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._announced: dict[str, float] = {}
        self.ttl = ttl_seconds
        self.max_items = max_items

    def remember_node(self, body: Mapping[str, Any], deleted: bool) -> bool:
        """Record a node's state; True when what matters to runs changed (a taint, Ready,
        or deletion), so the runs on it should look now."""
        info = node_info(body, exists=not deleted)
        now = time.monotonic()
        with self._lock:
            old = self._nodes.get(info.name)
            self._nodes[info.name] = _Seen(now, info)
            self._prune(now)
        if old is None:
            return (
                deleted or bool(set(info.taints) & set(INTERRUPTION_TAINTS)) or info.ready != "True"
            )
        o = old.node
        return (o.exists, o.taints, o.ready, o.ready_message) != (
            info.exists,
            info.taints,
            info.ready,
            info.ready_message,
        )

    def nodes(self) -> dict[str, NodeInfo]:
        with self._lock:
            return {k: v.node for k, v in self._nodes.items()}

    def interrupted_nodes(self) -> list[str]:
        """Nodes whose last known state carries an interruption taint (rebalance included:
        a new attempt should not land on a node that is likely to go)."""
        with self._lock:
            return sorted(
                n for n, s in self._nodes.items() if set(s.node.taints) & set(INTERRUPTION_TAINTS)
            )

    def remember_pod(self, namespace: str, run: str, body: Mapping[str, Any]) -> None:
        """The last state the watch saw of a pod of ``run`` (kept after its deletion)."""
        uid = str((body.get("metadata") or {}).get("uid"))
        with self._lock:
            self._pods.setdefault((namespace, run), {})[uid] = (time.monotonic(), dict(body))

    def seen_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for _, p in self._pods.get((namespace, run), {}).values()]

    def forget_run(self, namespace: str, run: str) -> None:
        with self._lock:
            self._pods.pop((namespace, run), None)

    def first_time(self, key: str) -> bool:
        """True once per key (events announced once per process)."""
        with self._lock:
            if key in self._announced:
                return False
            self._announced[key] = time.monotonic()
            return True

    def _prune(self, now: float) -> None:
        cutoff = now - self.ttl
        for name in [n for n, s in self._nodes.items() if s.at < cutoff]:
            del self._nodes[name]
        for key, pods in list(self._pods.items()):
            for uid in [u for u, (t, _) in pods.items() if t < cutoff]:
                del pods[uid]
            if not pods:
                del self._pods[key]
        for k in [k for k, t in self._announced.items() if t < cutoff]:
            del self._announced[k]
        while len(self._nodes) > self.max_items:
            del self._nodes[min(self._nodes, key=lambda n: self._nodes[n].at)]


def table_prices(_types: Sequence[str]) -> tuple[Mapping[str, Price] | Prices, None]:
    from spotrun_operator.cost import DEFAULT_PRICES

    return DEFAULT_PRICES, None


class Runner:
    def __init__(
        self,
        kube: Kube,
        cfg: OperatorConfig,
        metrics: Metrics,
        memory: Memory | None = None,
        prices: PriceSource = table_prices,
        workers: int = 8,
    ) -> None:
        self.kube = kube
        self.cfg = cfg
        self.metrics = metrics
        self.memory = memory or Memory()
        self.prices = prices
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._wakers: dict[Key, asyncio.Event] = {}

    # --- called from kopf handlers (event loop) ------------------------------------
    def ensure(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._wakers[key] = asyncio.Event()
            self._tasks[key] = asyncio.get_running_loop().create_task(
                self._loop(key), name=f"run {namespace}/{name}"
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
        self.metrics.observe_run(namespace, name, None, None)

    async def shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _loop(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        waker = self._wakers[key]
        failures = 0
        while True:
            waker.clear()
            try:
                delay = await loop.run_in_executor(self.pool, self.reconcile, *key)
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
    def reconcile(self, namespace: str, name: str) -> float | None:
        """Observe, decide, write status, act. Returns the delay until the next look, or
        None when the run no longer exists."""
        started = time.monotonic()
        try:
            for _ in range(5):
                run = self.kube.get_run(namespace, name)
                if run is None:
                    self.metrics.observe_run(namespace, name, None, None)
                    return None
                ref = run_ref(run)
                types = ((run.get("spec") or {}).get("capacity") or {}).get("instanceTypes") or []
                prices, pricing_condition = self.prices(list(types))
                obs = observe(
                    self.kube,
                    run,
                    remembered_nodes=self.memory.nodes(),
                    seen_pods=self.memory.seen_pods(namespace, name),
                    interrupted_nodes=self.memory.interrupted_nodes(),
                    rand=random.random(),
                    prices=prices,
                    pricing_condition=pricing_condition,
                )
                d = decide(obs, self.cfg)
                if d.status is not None:
                    rv = str(run["metadata"]["resourceVersion"])
                    if not self.kube.patch_run_status(namespace, name, rv, d.status):
                        continue  # someone (the trainer) wrote meanwhile: look again
                self.metrics.record(d.metrics)
                for ev in d.events:
                    if ev.key is None or self.memory.first_time(ev.key):
                        self.kube.post_event(ref, ev)
                self.kube.execute(namespace, d.actions)
                self.metrics.observe_run(namespace, name, d.phase, d.checkpoint_time, d.gauges)
                for ev in d.events:
                    log.info("%s/%s %s: %s", namespace, name, ev.reason, ev.message)
                return d.requeue_after
            return 0.5
        finally:
            self.metrics.reconcile_duration.observe(time.monotonic() - started)
