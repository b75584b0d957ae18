"""Shared pieces of the operator benchmarks: where a recovery's time goes, percentiles
(processes and the machine: ``process_stats``; raw watches: ``kube_watch``; the audit log:
``audit_log``).

A recovery of a TrainingRun is the time from an interruption signal on one of its nodes to
every pod of its next attempt Running. The benchmark observes each boundary itself,
through its own watches, with its own clock (``time.time()`` when the watch event arrives;
the API's timestamps have one-second precision, too coarse for sub-second phases):

====================  =======================================================================
boundary              observed as
====================  =======================================================================
``signal``            the injection starts: just before the first write of the signal's
                      plan (the NTH taint, Karpenter's taint, the instance dying, ...),
                      after the injector's own reads (``inject.interrupt``'s ``on_start``)
``visible``           the first trace of the signal in the API: on the node (a taint other
                      than the fleet's own, ``unschedulable``, Ready not True, a deletion)
                      or on a pod of the attempt (a deletion, ``DisruptionTarget``, a
                      terminal phase). An instance that dies without notice (``loss``)
                      becomes visible only when the node lifecycle controller misses its
                      heartbeats (``--node-monitor-grace-period``) or the CCM deletes it
``detected``          the run's ``status.attempts[n]`` first carries an ``outcome``: the
                      operator has recognised the loss and written it (TrainingRun watch)
``stopped``           the attempt's PyTorchJob ``<run>-a<n>`` is deleted or being deleted
                      (PyTorchJob watch: ``DELETED`` or a ``deletionTimestamp``)
``pods_gone``         the last pod of attempt n is deleted or terminal (pod watch ``DELETED``
                      or phase ``Failed``/``Succeeded``: every container has exited, the
                      operator's own rule; a graceful shutdown's pods end Failed first)
``backoff_over``      ``status.attempts[n].nextAttemptAt`` (the operator's due time, whole
                      seconds as written), clamped into [pods_gone, created]
``created``           the PyTorchJob ``<run>-a<n+1>`` is ``ADDED``
``admitted``          the last pod of attempt n+1 is ``ADDED`` (the training operator has
                      created the whole gang; no Kueue in these benchmarks)
``scheduled``         every pod of attempt n+1 has a ``spec.nodeName`` (bound)
``running``           every pod of attempt n+1 is ``status.phase: Running``
====================  =======================================================================

Each boundary is taken as ``max(previous boundary, observed)``, so the phases are never
negative and add up exactly to signal → running (a loss whose pods vanished with their
node is "gone" before the job is deleted: its ``pods_gone`` phase is then 0). The phases:

* **notice** = visible - signal: the cluster's own components making the signal visible
  (nothing an operator can shorten: heartbeat timeouts for a silent loss).
* **detect** = detected - visible: the event reaching the operator and its decision.
* **stop** = stopped - detected: the gang's stop (one job delete).
* **pods_gone** = pods_gone - stopped: the gang's pods ending (graceful deletion, or the
  kubelet reporting them terminal).
* **backoff** = backoff_over - pods_gone: what remains of the backoff once the gang is gone.
  The backoff itself (``nextAttemptAt - endedAt``, from the status) is reported apart as
  ``configured_backoff``: it runs from the outcome, in parallel with the stop, and counts
  only the run's own consecutive losses, so it equals the first-loss backoff for every run.
* **create** = created - backoff_over: the operator's reaction once the next attempt is due
  (PVC/secret checks, status write of ``createdAt``, the job's create).
* **admit** = admitted - created: the training operator creating the pods.
* **schedule** = scheduled - admitted: kube-scheduler binding them.
* **running** = running - scheduled: the (kwok) kubelet starting them.

Every boundary after ``signal`` is late by the bench's own watch delivery (one Python
process, its watches busy in a storm). For the one the target is on, the next attempt's
creation, the apiserver's audit log also says when it was stored (``t_created_stored``,
microseconds): ``signal_to_stored`` is signal → created without that delay, and
``watch_lag_created`` the delay itself.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PHASES: tuple[str, ...] = (
    "notice",
    "detect",
    "stop",
    "pods_gone",
    "backoff",
    "create",
    "admit",
    "schedule",
    "running",
)
JOB_LABEL = "training.kubeflow.org/job-name"
# Who owns each phase up to the next attempt's creation: the operator (its watch, decision,
# job delete and create) or the cluster's own components (the signal's component and the
# apiserver making it visible; the garbage collector and the kubelets ending the old gang).
# The backoff is neither: it is configured. Summed per recovery, so the p99 of each share
# is one recovery's, not a sum of p99s.
OPERATOR_PHASES: tuple[str, ...] = ("detect", "stop", "create")
CLUSTER_PHASES: tuple[str, ...] = ("notice", "pods_gone")


# --- statistics -------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[k], 3)


def spread(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": round(max(values), 3) if values else None,
        "mean": round(statistics.mean(values), 3) if values else None,
    }


def parse_time(stamp: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time, None for none."""
    if not stamp:
        return None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def job_attempt(name: str) -> tuple[str, int]:
    """(run, attempt) of a PyTorchJob name ``<run>-a<attempt>``; attempt 0 if none."""
    run, _, attempt = name.rpartition("-a")
    return (run, int(attempt)) if attempt.isdigit() else (name, 0)


# --- one recovery -----------------------------------------------------------------------


@dataclass
class Recovery:
    """The observed boundaries of one recovery (epoch seconds, bench clock)."""

    run: str
    size: int
    signal: str = ""
    node: str = ""
    group: str = "storm"
    attempt: int = 1
    t_signal: float | None = None
    t_visible: float | None = None
    visible_by: str = ""
    t_detected: float | None = None
    t_stopped: float | None = None
    t_pods_gone: float | None = None
    next_attempt_at: float | None = None
    ended_at: float | None = None
    reason: str = ""
    t_created: float | None = None
    # When the apiserver stored the next attempt (the operator's create in the audit log):
    # ``t_created`` less the bench's own watch delivery.
    t_created_stored: float | None = None
    t_admitted: float | None = None
    t_scheduled: float | None = None
    t_running: float | None = None
    old_pods: set[str] = field(default_factory=set)
    new_pods: dict[str, dict[str, bool]] = field(default_factory=dict)
    # What each status write of the run changed, from the signal to the next attempt's
    # Running phase (:func:`status_change`): where the writes per recovery go.
    status_writes: list[str] = field(default_factory=list)

    def configured_backoff(self) -> float | None:
        if self.next_attempt_at is None or self.ended_at is None:
            return None
        return self.next_attempt_at - self.ended_at

    def boundaries(self) -> list[float] | None:
        """signal, visible, detected, stopped, pods_gone, backoff_over, created, admitted,
        scheduled, running (monotonic, see the module docstring); None until it ran."""
        if self.t_signal is None or self.t_running is None or self.t_created is None:
            return None
        out = [self.t_signal]

        def step(t: float | None) -> None:
            out.append(max(out[-1], t if t is not None else out[-1]))

        step(self.t_visible)
        step(self.t_detected)
        step(self.t_stopped)
        step(self.t_pods_gone)
        due = self.next_attempt_at if self.next_attempt_at is not None else out[-1]
        out.append(min(max(out[-1], due), max(out[-1], self.t_created)))
        step(self.t_created)
        step(self.t_admitted)
        step(self.t_scheduled)
        step(self.t_running)
        return out

    def phases(self) -> dict[str, float] | None:
        b = self.boundaries()
        if b is None:
            return None
        return {name: b[i + 1] - b[i] for i, name in enumerate(PHASES)}


# Status fields that change with any write (the operator's derived strings and figures):
# named in a write's label only when nothing else changed.
_DERIVED = frozenset(("display", "conditions", "message", "cost", "observedGeneration"))


def status_change(before: dict[str, Any], after: dict[str, Any], attempt: int) -> str:
    """A label for one status write of a recovery of attempt ``attempt``: the fields of the
    lost attempt ("old.") and of the next one ("new.") that changed, and the other
    top-level fields, sorted; the derived fields only when nothing else changed."""
    names: set[str] = set()
    entries = {
        side: [
            {e.get("attempt"): e for e in st.get("attempts") or []}.get(attempt + offset) or {}
            for st in (before, after)
        ]
        for side, offset in (("old", 0), ("new", 1))
    }
    for side, (b, a) in entries.items():
        if not b and a:
            names.add(f"{side}.created")
            continue
        names |= {f"{side}.{k}" for k in set(a) | set(b) if a.get(k) != b.get(k)}
    keys = (set(before) | set(after)) - {"attempts"}
    changed = {k for k in keys if before.get(k) != after.get(k)}
    names |= changed - _DERIVED
    return ",".join(sorted(names or changed)) or "nothing"


def status_write_table(recoveries: list[Recovery]) -> dict[str, Any]:
    """Status writes per recovery, and how often each kind of write (its label) occurs per
    recovery, over the recoveries that reached Running."""
    done = [r for r in recoveries if r.t_running is not None]
    kinds = Counter(w for r in done for w in r.status_writes)
    n = len(done) or 1
    return {
        "recoveries": len(done),
        "per_recovery": round(sum(len(r.status_writes) for r in done) / n, 2),
        "by_change": {k: round(v / n, 2) for k, v in kinds.most_common()},
    }


def phase_table(recoveries: list[Recovery], signals: Iterable[str]) -> dict[str, Any]:
    """p50/p99 of each phase, of signal → created and → running and of the configured
    backoff, for every signal and for all together."""
    out: dict[str, Any] = {}
    signals = list(signals)
    rows = {s: {s} for s in signals} | {"all": set(signals)}
    if "loss" in signals:  # the signals with a notice: what the operator can act on early
        rows["all_but_loss"] = set(signals) - {"loss"}
    for sig, members in rows.items():
        group = [r for r in recoveries if r.signal in members]
        done = [r for r in group if r.phases() is not None]
        row: dict[str, Any] = {"interrupted": len(group), "recovered": len(done)}
        for name in PHASES:
            row[name] = spread([p[name] for r in done if (p := r.phases()) is not None])
        row["signal_to_created"] = spread(
            [r.t_created - r.t_signal for r in group if r.t_created and r.t_signal]
        )
        row["signal_to_stored"] = spread(
            [r.t_created_stored - r.t_signal for r in group if r.t_created_stored and r.t_signal]
        )
        row["watch_lag_created"] = spread(
            [r.t_created - r.t_created_stored for r in group if r.t_created and r.t_created_stored]
        )
        row["visible_to_created"] = spread(
            [r.t_created - r.t_visible for r in group if r.t_created and r.t_visible]
        )
        row["signal_to_running"] = spread(
            [r.t_running - r.t_signal for r in done if r.t_running and r.t_signal]
        )
        row["configured_backoff"] = spread(
            [b for r in group if (b := r.configured_backoff()) is not None]
        )
        shares = (("operator_share", OPERATOR_PHASES), ("cluster_share", CLUSTER_PHASES))
        for share, names in shares:
            row[share] = spread(
                [sum(p[n] for n in names) for r in done if (p := r.phases()) is not None]
            )
        out[sig] = row
    return out


def format_phase_table(table: dict[str, Any]) -> str:
    """The phase table as text: one line per signal, p50/p99 seconds per column."""
    cols = [
        *PHASES,
        "signal_to_created",
        "signal_to_stored",
        "watch_lag_created",
        "visible_to_created",
        "signal_to_running",
        "configured_backoff",
        "operator_share",
        "cluster_share",
    ]
    short = {
        "signal_to_created": "sig→created",
        "signal_to_stored": "sig→stored",
        "watch_lag_created": "watch lag",
        "visible_to_created": "vis→created",
        "signal_to_running": "sig→running",
        "configured_backoff": "cfg backoff",
        "operator_share": "operator",
        "cluster_share": "cluster",
    }
    head = f"{'signal':<10} {'n':>9} " + " ".join(f"{short.get(c, c)[:11]:>11}" for c in cols)
    lines = [head, " " * 20 + " ".join(f"{'p50/p99':>11}" for _ in cols)]
    for sig, row in table.items():
        cells = []
        for c in cols:
            s = row[c]
            cells.append(f"{_fmt(s['p50'])}/{_fmt(s['p99'])}".rjust(11))
        n = f"{row['recovered']}/{row['interrupted']}"
        lines.append(f"{sig:<10} {n:>9} " + " ".join(cells))
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
