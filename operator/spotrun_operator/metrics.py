"""Prometheus metrics of the operator. Nothing registers at import: :class:`Metrics` takes
the registry it writes to, so tests (and two operators in one process) never collide.

Cardinality: signal, reason and phase come from bounded sets; instance_type and zone are
bounded by the fleet. Per-run series (cost, savings, budget, checkpoint age and interval)
are removed when the run is deleted; checkpoint age and interval already when the run is
Suspended, Succeeded or Failed (nothing checkpoints then).

Series of the bounded label sets start at 0 (every signal, every failure reason, every
signal on each instance type and zone a gang ran on), so ``increase()``/``rate()`` see the
first event too: Prometheus cannot count the first increment of a series that appears at 1.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from spotrun_operator.classify import KNOWN_FAILURE_REASONS
from spotrun_operator.common import parse_time
from spotrun_operator.plan import MetricEvent, RunGauges
from spotrun_operator.signals import SIGNAL_PRIORITY

PHASES = ("Pending", "Running", "Recovering", "Suspended", "Succeeded", "Failed")
# Phases in which no checkpoint is being written: checkpoint age and interval are dropped.
_NOT_CHECKPOINTING = frozenset({"Suspended", "Succeeded", "Failed"})
SIGNALS = (*SIGNAL_PRIORITY, "other")
CAPACITIES = ("spot", "on-demand")
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
        self.checkpoint_interval = Gauge(
            "spotrun_checkpoint_interval_seconds",
            "Checkpoint interval given to the run's live attempt (spec, or auto: Young/Daly).",
            ["namespace", "run"],
            registry=registry,
        )
        self.run_cost = Gauge(
            "spotrun_run_cost_usd",
            "Estimated spend of the run so far (every attempt), by capacity type.",
            ["namespace", "run", "capacity"],
            registry=registry,
        )
        self.savings_ratio = Gauge(
            "spotrun_run_savings_ratio",
            "1 - spend / the same node-hours on on-demand (0.65: 65% cheaper).",
            ["namespace", "run"],
            registry=registry,
        )
        self.budget_used = Gauge(
            "spotrun_budget_used_ratio",
            "Spend / spec.budget.maxUSD (runs with a budget only).",
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
        self._series: dict[tuple[str, str], set[Gauge]] = {}
        self._placements: set[tuple[str, str]] = set()
        for phase in PHASES:
            self.runs.labels(phase=phase).set(0)
        for signal in SIGNALS:
            self.recovery.labels(signal=signal)
            self.lost_work.labels(signal=signal)
        for reason in sorted(KNOWN_FAILURE_REASONS):
            self.failures.labels(reason=reason)

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
            elif ev.name == "placement":
                where = (labels.get("instance_type") or "unknown", labels.get("zone") or "unknown")
                with self._lock:
                    new = where not in self._placements
                    self._placements.add(where)
                if new:
                    for signal in SIGNALS:
                        self.preemptions.labels(
                            signal=signal, instance_type=where[0], zone=where[1]
                        )

    def observe_run(
        self,
        namespace: str,
        name: str,
        phase: str | None,
        checkpoint_time: str | None,
        gauges: RunGauges | None = None,
    ) -> None:
        """Latest phase, checkpoint and figures of a run (None phase: the run is gone, so
        every series of it goes)."""
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
            checkpointing = phase is not None and phase not in _NOT_CHECKPOINTING
            if not checkpointing or ckpt is None:
                self._drop(key, self.checkpoint_age)
            else:
                # Age is computed at scrape time, so it grows between reconciles.
                self._set(key, self.checkpoint_age).set_function(_age(ckpt.timestamp()))
            if phase is None:
                for gauge in list(self._series.get(key, ())):
                    self._drop(key, gauge)
            elif gauges is not None:
                self._export(key, gauges, checkpointing)
        for p, n in counts.items():
            self.runs.labels(phase=p).set(n)

    def _export(self, key: tuple[str, str], g: RunGauges, checkpointing: bool) -> None:
        """Per-run gauges of one reconcile (under the lock)."""
        for capacity, usd in zip(CAPACITIES, (g.spot_usd, g.on_demand_usd), strict=True):
            self._set(key, self.run_cost, capacity).set(usd)
        optional = (
            (self.savings_ratio, g.savings_ratio),
            (self.budget_used, g.budget_used_ratio),
            (self.checkpoint_interval, g.checkpoint_interval_seconds if checkpointing else None),
        )
        for gauge, value in optional:
            if value is None:
                self._drop(key, gauge)
            else:
                self._set(key, gauge).set(value)

    def _set(self, key: tuple[str, str], gauge: Gauge, *extra: str) -> Gauge:
        self._series.setdefault(key, set()).add(gauge)
        child: Gauge = gauge.labels(*key, *extra)
        return child

    def _drop(self, key: tuple[str, str], gauge: Gauge) -> None:
        """Remove every series of ``gauge`` for the run (each capacity of the cost)."""
        series = self._series.get(key)
        if series is None or gauge not in series:
            return
        series.discard(gauge)
        if not series:
            del self._series[key]
        extras = [(c,) for c in CAPACITIES] if gauge is self.run_cost else [()]
        for extra in extras:
            with contextlib.suppress(KeyError):
                gauge.remove(*key, *extra)


def _age(ts: float) -> Callable[[], float]:
    return lambda: max(0.0, time.time() - ts)


def _signal(value: str | None) -> str:
    return value if value in SIGNAL_PRIORITY else "other"


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
    """Expose ``registry`` on http://addr:port/metrics (a daemon thread)."""
    start_http_server(port, addr=addr, registry=registry)
