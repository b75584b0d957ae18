"""The operator's own health, named as controller-runtime and client-go name it, so an
SRE's existing dashboards and alerts for Go controllers read spotrun too:

* ``workqueue_*{name="trainingrun"}``: a run is *queued* from the moment a watch event
  (or its requeue timer) wakes its loop until a reconcile thread picks it up; depth,
  adds, time queued, time worked, retries (client-go's workqueue metrics);
* ``controller_runtime_reconcile_total{controller, result}`` and
  ``controller_runtime_reconcile_time_seconds{controller}``, plus the workers;
* ``spotrun_cache_synced`` and ``spotrun_cache_objects{kind}``: whether the watch caches
  reconciles read hold their initial listing (:mod:`cache`, :mod:`initial_sync`), and how
  much they hold.

Leader status (``leader_election_master_status``) comes with leader election.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

NAME = "trainingrun"
# client-go's workqueue buckets: 10 ns .. 10 s by tens (ExponentialBuckets(10e-9, 10, 10)).
QUEUE_BUCKETS = tuple(10e-9 * 10**i for i in range(10))
# controller-runtime's reconcile_time buckets (internal/controller/metrics/metrics.go).
RECONCILE_TIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
    0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25,
    30, 40, 50, 60,
)  # fmt: skip
# What one reconcile came to (controller-runtime's result label has success, error,
# requeue, requeue_after; spotrun says what happened instead).
RESULTS = ("acted", "unchanged", "conflict", "error", "gone")


class QueueMetrics:
    def __init__(self, registry: CollectorRegistry, workers: int) -> None:
        self._lock = threading.Lock()
        self._queued = 0
        self.depth = Gauge(
            "workqueue_depth", "Runs woken and waiting for a reconcile thread.", ["name"],
            registry=registry,
        )  # fmt: skip
        self.adds = Counter(
            "workqueue_adds_total", "Wake-ups handed to the reconcile threads.", ["name"],
            registry=registry,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long a woken run waits before a reconcile thread picks it up.",
            ["name"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long one reconcile takes (observe, decide, write, act).",
            ["name"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "workqueue_retries_total", "Reconciles retried after an error or a conflict.",
            ["name"], registry=registry,
        )  # fmt: skip
        self.reconciles = Counter(
            "controller_runtime_reconcile_total",
            "Reconciles by what they came to: acted (wrote status or changed children), "
            "unchanged, conflict (the run changed since read), error, gone (run deleted).",
            ["controller", "result"],
            registry=registry,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Duration of one reconcile.",
            ["controller"],
            buckets=RECONCILE_TIME_BUCKETS,
            registry=registry,
        )
        self.active = Gauge(
            "controller_runtime_active_workers", "Reconcile threads busy now.", ["controller"],
            registry=registry,
        )  # fmt: skip
        max_workers = Gauge(
            "controller_runtime_max_concurrent_reconciles", "Reconcile threads.", ["controller"],
            registry=registry,
        )  # fmt: skip
        max_workers.labels(NAME).set(workers)
        for result in RESULTS:
            self.reconciles.labels(NAME, result)
        self.depth.labels(NAME).set(0)
        self.adds.labels(NAME)
        self.retries.labels(NAME)
        self.active.labels(NAME).set(0)

    def queued(self) -> float:
        """A run was woken: it waits for a thread from now (returns when, for ``picked``)."""
        with self._lock:
            self._queued += 1
            self.depth.labels(NAME).set(self._queued)
        self.adds.labels(NAME).inc()
        return time.monotonic()

    @contextmanager
    def working(self, since: float) -> Iterator[None]:
        """A thread picked up the run queued at ``since`` and reconciles it."""
        started = time.monotonic()
        with self._lock:
            self._queued -= 1
            self.depth.labels(NAME).set(self._queued)
        self.queue_duration.labels(NAME).observe(started - since)
        self.active.labels(NAME).inc()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.active.labels(NAME).dec()
            self.work_duration.labels(NAME).observe(took)
            self.reconcile_time.labels(NAME).observe(took)

    def finished(self, result: str) -> None:
        self.reconciles.labels(NAME, result).inc()
        if result in ("error", "conflict"):
            self.retries.labels(NAME).inc()


class CacheCollector:
    """``spotrun_cache_synced`` and ``spotrun_cache_objects{kind}`` at scrape time."""

    def __init__(self, synced: Callable[[], bool], sizes: Callable[[], Mapping[str, int]]):
        self._synced = synced
        self._sizes = sizes

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("spotrun_cache_synced", "")
        yield GaugeMetricFamily("spotrun_cache_objects", "", labels=["kind"])

    def collect(self) -> Iterator[Metric]:
        synced = GaugeMetricFamily(
            "spotrun_cache_synced",
            "1 once the watch caches reconciles read hold every object of their initial "
            "listing (no reconcile runs before).",
            value=1.0 if self._synced() else 0.0,
        )
        objects = GaugeMetricFamily(
            "spotrun_cache_objects", "Objects in the watch caches, by kind.", labels=["kind"]
        )
        for kind, n in sorted(self._sizes().items()):
            objects.add_metric([kind], n)
        yield synced
        yield objects
