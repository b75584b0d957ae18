"""Prometheus metrics of the operator. Nothing registers at import: :class:`Metrics` takes
the registry it writes to, so tests (and two operators in one process) never collide.

Cardinality: signal, reason and phase come from bounded sets; instance_type and zone are
bounded by the fleet; per-run series (checkpoint age) are removed when a run is deleted or
finishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from spotrun_operator.common import parse_time
from spotrun_operator.plan import MetricEvent
from spotrun_operator.signals import SIGNAL_PRIORITY

PHASES = ("Pending", "Running", "Recovering", "Suspended", "Succeeded", "Failed")
# A recovery spans the grace period (110 s), the backoff and scheduling: minutes.
RECOVERY_BUCKETS = (5, 10, 20, 30, 60, 120, 180, 300, 600, 1200, 3600)
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runs = Gauge("spotrun_runs", "TrainingRuns by phase.", ["phase"], registry=registry)
        self.preemptions = Counter(
            "spotrun_preemptions_total",
            "Attempts lost to the infrastructure, by interruption signal and node.",
            ["signal", "instance_type", "zone"],
            registry=registry,
        )
        self.failures = Counter(
            "spotrun_failures_total",
            "Attempts lost to application failures, by reason.",
            ["reason"],
            registry=registry,
        )
        self.recovery = Histogram(
            "spotrun_recovery_seconds",
            "From an interruption signal to the next attempt's gang Running.",
            ["signal"],
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        )
        self.lost_work = Counter(
            "spotrun_lost_work_seconds_total",
            "Training time lost with preempted attempts (not covered by a checkpoint).",
            ["signal"],
            registry=registry,
        )
        self.checkpoint_age = Gauge(
            "spotrun_checkpoint_age_seconds",
            "Seconds since the run's newest committed checkpoint.",
            ["namespace", "run"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "spotrun_reconcile_duration_seconds",
            "Duration of one reconcile of a TrainingRun (observe, decide, act).",
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "spotrun_reconcile_errors_total",
            "Reconciles that raised (retried with backoff).",
            registry=registry,
        )
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._checkpoints: dict[tuple[str, str], float] = {}
        for phase in PHASES:
            self.runs.labels(phase=phase).set(0)

    def record(self, events: list[MetricEvent]) -> None:
        for ev in events:
            labels = dict(ev.labels)
            if ev.name == "preemption":
                self.preemptions.labels(
                    signal=_signal(labels.get("signal")),
                    instance_type=labels.get("instance_type") or "unknown",
                    zone=labels.get("zone") or "unknown",
                ).inc(ev.value)
            elif ev.name == "failure":
                self.failures.labels(reason=labels.get("reason") or "Error").inc(ev.value)
            elif ev.name == "recovery":
                self.recovery.labels(signal=_signal(labels.get("signal"))).observe(ev.value)
            elif ev.name == "lost_work":
                self.lost_work.labels(signal=_signal(labels.get("signal"))).inc(max(0.0, ev.value))

    def observe_run(
        self, namespace: str, name: str, phase: str | None, checkpoint_time: str | None
    ) -> None:
        """Latest phase and checkpoint of a run (None phase: the run is gone)."""
        key = (namespace, name)
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts: Mapping[str, int] = {
                p: sum(1 for v in self._phases.values() if v == p) for p in PHASES
            }
            ckpt = parse_time(checkpoint_time)
            if phase in (None, "Succeeded", "Failed") or ckpt is None:
                if self._checkpoints.pop(key, None) is not None:
                    self.checkpoint_age.remove(namespace, name)
            else:
                self._checkpoints[key] = ckpt.timestamp()
                # Age is computed at scrape time, so it grows between reconciles.
                self.checkpoint_age.labels(namespace=namespace, run=name).set_function(
                    _age(ckpt.timestamp())
                )
        for p, n in counts.items():
            self.runs.labels(phase=p).set(n)


def _age(ts: float) -> Callable[[], float]:
    return lambda: max(0.0, time.time() - ts)


def _signal(value: str | None) -> str:
    return value if value in SIGNAL_PRIORITY else "other"


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
    """Expose ``registry`` on http://addr:port/metrics (a daemon thread)."""
    start_http_server(port, addr=addr, registry=registry)
