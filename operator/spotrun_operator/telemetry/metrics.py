"""Prometheus metrics of the operator. Nothing registers at import: :class:`Metrics` takes
the registry it writes to, so tests (and two operators in one process) never collide.

Two kinds of series:

* events (preemptions, failures, recoveries, lost work, reconciles) are counters and
  histograms, incremented as decisions happen;
* per-run state (runs by phase, checkpoint age, interval and stall, cost, savings, budget) comes
  from :class:`RunCollector`, which renders a snapshot of each run's latest reconcile at
  scrape time. Nothing is tracked series by series: a deleted run leaves the snapshot and
  so every series of it goes; checkpoint age and interval are not rendered while the run
  is Suspended, Succeeded or Failed (nothing checkpoints then); age is computed at scrape
  time, so it grows between reconciles;
* per capacity pool (instance type, zone, capacity), the interruptions, node-seconds and
  MTBF behind ``checkpoint.interval: auto``, from :class:`PoolCollector`'s latest tally.

Cardinality: signal, reason and phase come from bounded sets; instance_type and zone are
bounded by the fleet. Series of the bounded label sets start at 0 (every signal, every
failure reason, every signal on each instance type and zone a gang ran on), so
``increase()``/``rate()`` see the first event too: Prometheus cannot count the first
increment of a series that appears at 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spotrun_operator.decisions.queueing import KUEUE_EVICTION_REASONS
from spotrun_operator.facts.common import parse_time
from spotrun_operator.facts.pools import Pool, PoolStats, PoolTally
from spotrun_operator.facts.signals import SIGNAL_PRIORITY
from spotrun_operator.judging.classify import KNOWN_FAILURE_REASONS
from spotrun_operator.model.plan import MetricEvent, RunGauges
from spotrun_operator.telemetry.queue_metrics import RESULTS

PHASES = ("Pending", "Running", "Recovering", "Suspended", "Succeeded", "Failed")
# Phases in which no checkpoint is being written: checkpoint age and interval are dropped.
_NOT_CHECKPOINTING = frozenset({"Suspended", "Succeeded", "Failed"})
SIGNALS = (*SIGNAL_PRIORITY, "other")
CAPACITIES = ("spot", "on-demand")
# A recovery spans the grace period (110 s), the backoff and scheduling: minutes.
RECOVERY_BUCKETS = (5, 10, 20, 30, 60, 120, 180, 300, 600, 1200, 3600)
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class RunState:
    """What one run's latest reconcile left for the per-run series."""

    phase: str
    checkpoint_ts: float | None = None  # epoch seconds of the newest committed checkpoint
    gauges: RunGauges | None = None  # None: not figured yet (no per-run gauges)

    @property
    def checkpointing(self) -> bool:
        return self.phase not in _NOT_CHECKPOINTING


# name, help, labels of each per-run family (the order the collector renders them in).
_RUN_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("spotrun_runs", "TrainingRuns by phase.", ("phase",)),
    (
        "spotrun_checkpoint_age_seconds",
        "Seconds since the run's newest committed checkpoint.",
        ("namespace", "run"),
    ),
    (
        "spotrun_checkpoint_interval_seconds",
        "Checkpoint interval given to the run's live attempt (spec, or auto: Young/Daly).",
        ("namespace", "run"),
    ),
    (
        "spotrun_checkpoint_stall_seconds",
        "Seconds the run's newest periodic checkpoint save blocked training (the trainer's "
        "status.progress.checkpointStallSeconds; the C of checkpoint.interval auto).",
        ("namespace", "run"),
    ),
    (
        "spotrun_run_cost_usd",
        "Estimated spend of the run so far (every attempt), by capacity type.",
        ("namespace", "run", "capacity"),
    ),
    (
        "spotrun_run_spares_cost_usd",
        "Estimated spend on the nodes held by the run's warm spares (spec.capacity.warmSpares; "
        "not in spotrun_run_cost_usd); runs that had spares only.",
        ("namespace", "run"),
    ),
    (
        "spotrun_run_savings_ratio",
        "1 - spend / the same node-hours on on-demand (0.65: 65% cheaper).",
        ("namespace", "run"),
    ),
    (
        "spotrun_budget_used_ratio",
        "Spend / spec.budget.maxUSD (runs with a budget only).",
        ("namespace", "run"),
    ),
)


class RunCollector(Collector):
    """Per-run gauges rendered from a snapshot of the runs at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], RunState] = {}
        self._clock = clock

    def update(self, namespace: str, name: str, state: RunState | None) -> None:
        """The run's latest state (None: the run is gone). Figures not given this time
        (``gauges`` None) keep their last values."""
        key = (namespace, name)
        with self._lock:
            old = self._runs.get(key)
            if state is None:
                self._runs.pop(key, None)
                return
            if state.gauges is None and old is not None:
                state = RunState(state.phase, state.checkpoint_ts, old.gauges)
            self._runs[key] = state

    def snapshot(self) -> dict[tuple[str, str], RunState]:
        with self._lock:
            return dict(self._runs)

    def describe(self) -> Iterator[Metric]:
        for name, text, labels in _RUN_FAMILIES:
            yield GaugeMetricFamily(name, text, labels=labels)

    def collect(self) -> Iterator[Metric]:
        runs = self.snapshot()
        fams = {
            name: GaugeMetricFamily(name, text, labels=labels)
            for name, text, labels in _RUN_FAMILIES
        }
        for phase in PHASES:
            count = sum(1 for st in runs.values() if st.phase == phase)
            fams["spotrun_runs"].add_metric([phase], count)
        now = self._clock()
        for (ns, run), st in sorted(runs.items()):
            if st.checkpointing and st.checkpoint_ts is not None:
                age = max(0.0, now - st.checkpoint_ts)
                fams["spotrun_checkpoint_age_seconds"].add_metric([ns, run], age)
            g = st.gauges
            if g is None:
                continue
            for capacity, usd in zip(CAPACITIES, (g.spot_usd, g.on_demand_usd), strict=True):
                fams["spotrun_run_cost_usd"].add_metric([ns, run, capacity], usd)
            optional = (
                ("spotrun_run_spares_cost_usd", g.spares_usd),
                ("spotrun_run_savings_ratio", g.savings_ratio),
                ("spotrun_budget_used_ratio", g.budget_used_ratio),
                (
                    "spotrun_checkpoint_interval_seconds",
                    g.checkpoint_interval_seconds if st.checkpointing else None,
                ),
                ("spotrun_checkpoint_stall_seconds", g.checkpoint_stall_seconds),
            )
            for name, value in optional:
                if value is not None:
                    fams[name].add_metric([ns, run], value)
        yield from fams.values()


_POOL_LABELS = ("instance_type", "zone", "capacity")
# name, help of each per-pool family (figures over the finished attempts of every run).
_POOL_FAMILIES: tuple[tuple[str, str], ...] = (
    (
        "spotrun_pool_interruptions",
        "Preempted attempts in the capacity pool over the attempt histories of every run.",
    ),
    (
        "spotrun_pool_node_seconds",
        "Node-seconds attempts ran in the capacity pool over every run's attempt histories.",
    ),
    (
        "spotrun_pool_mtbf_seconds",
        "Observed mean time between interruptions of one node in the capacity pool "
        "(node-seconds / interruptions; pools with an interruption only): the M of "
        "checkpoint.interval auto.",
    ),
)


class PoolCollector(Collector):
    """Per-pool gauges rendered from the latest tally (:mod:`pools`) at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tally: dict[Pool, PoolStats] = {}

    def update(self, tally: PoolTally) -> None:
        with self._lock:
            self._tally = dict(tally)

    def describe(self) -> Iterator[Metric]:
        for name, text in _POOL_FAMILIES:
            yield GaugeMetricFamily(name, text, labels=_POOL_LABELS)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tally = dict(self._tally)
        fams = [GaugeMetricFamily(name, text, labels=_POOL_LABELS) for name, text in _POOL_FAMILIES]
        for pool, st in sorted(tally.items()):
            labels = [pool.instance_type, pool.zone or "unknown", pool.capacity_type]
            fams[0].add_metric(labels, st.interruptions)
            fams[1].add_metric(labels, st.node_seconds)
            if st.rate is not None:
                fams[2].add_metric(labels, 1.0 / st.rate)
        yield from fams


def leader_status_gauge(registry: CollectorRegistry) -> Gauge:
    """controller-runtime's (client-go leaderelection metrics) name and label, so a
    dashboard or alert written for Go controllers reads it as is: 1 on the replica that
    holds the Lease, 0 on standbys; no series without --leader-elect."""
    return Gauge(
        "leader_election_master_status",
        "1 while this replica holds the leader election Lease `name`, else 0.",
        ["name"],
        registry=registry,
    )


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runs = RunCollector()
        registry.register(self.runs)
        self.pools = PoolCollector()
        registry.register(self.pools)
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
        self.queue_preemptions = Counter(
            "spotrun_queue_preemptions_total",
            "Attempts Kueue preempted or evicted (spec.queueName), by Kueue's eviction reason.",
            ["reason"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "spotrun_reconcile_duration_seconds",
            "Duration of one reconcile of a TrainingRun (observe, decide, act), by what it "
            "came to (queue_metrics.RESULTS).",
            ["result"],
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "spotrun_reconcile_errors_total",
            "Reconciles that raised (retried with backoff).",
            registry=registry,
        )
        self.leader_status = leader_status_gauge(registry)
        self._lock = threading.Lock()
        self._placements: set[tuple[str, str]] = set()
        self._label_known_series()

    def _label_known_series(self) -> None:
        """Every known label value has a series from the start (0), so a rate over it is
        defined before its first event."""
        for signal in SIGNALS:
            self.recovery.labels(signal=signal)
            self.lost_work.labels(signal=signal)
        for reason in sorted(KNOWN_FAILURE_REASONS):
            self.failures.labels(reason=reason)
        for result in RESULTS:
            self.reconcile_duration.labels(result=result)

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
            elif ev.name == "queue_preemption":
                reason = labels.get("reason") or "Other"
                self.queue_preemptions.labels(
                    reason=reason if reason in KUEUE_EVICTION_REASONS else "Other"
                ).inc(ev.value)
            elif ev.name == "placement":
                self._placed(labels.get("instance_type"), labels.get("zone"))

    def _placed(self, instance_type: str | None, zone: str | None) -> None:
        """A gang ran on this instance type and zone: its preemption series start at 0."""
        where = (instance_type or "unknown", zone or "unknown")
        with self._lock:
            new = where not in self._placements
            self._placements.add(where)
        if new:
            for signal in SIGNALS:
                self.preemptions.labels(signal=signal, instance_type=where[0], zone=where[1])

    def leading(self, name: str, leading: bool) -> None:
        """Whether this replica holds the Lease ``name`` (leader election)."""
        self.leader_status.labels(name=name).set(1 if leading else 0)

    def observe_pools(self, tally: PoolTally) -> None:
        """The latest per-pool interruption tally (rendered at scrape time)."""
        self.pools.update(tally)

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
        if phase is None:
            self.runs.update(namespace, name, None)
            return
        ckpt = parse_time(checkpoint_time)
        state = RunState(phase, ckpt.timestamp() if ckpt else None, gauges)
        self.runs.update(namespace, name, state)


def _signal(value: str | None) -> str:
    return value if value in SIGNAL_PRIORITY else "other"


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
    """Expose ``registry`` on http://addr:port/metrics (a daemon thread)."""
    start_http_server(port, addr=addr, registry=registry)
