"""The working state of one :func:`reconcile.decide` call (pure).

:class:`Recovery` holds a copy of the operator-owned status and accumulates actions,
events and metric events; :meth:`Recovery.finish` derives phase, conditions and cost and
turns the changes into a merge patch.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from spotrun_operator import builders
from spotrun_operator import status as st_
from spotrun_operator.classify import is_terminal
from spotrun_operator.common import LABEL_ATTEMPT, fmt_time, job_name, parse_time
from spotrun_operator.config import OperatorConfig
from spotrun_operator.cost import DEFAULT_PRICES, Cost
from spotrun_operator.plan import (
    Action,
    CreateJob,
    Decision,
    DeleteJob,
    DeletePods,
    EnsureObjects,
    Event,
    MetricEvent,
    Observed,
    RunGauges,
)
from spotrun_operator.spec import RunSpec
from spotrun_trainer.contract import DEFAULT_TERMINATION_GRACE_SECONDS as DEFAULT_GRACE

OWNED: Final = (
    "phase",
    "message",
    "observedGeneration",
    "attempt",
    "preemptions",
    "failures",
    "startTime",
    "completionTime",
    "lastPreemption",
    "cost",
    "conditions",
    "attempts",
    "archived",
)
_RECOVERING_FROM: Final = (st_.PREEMPTED, st_.FAILED, st_.CAPACITY_FALLBACK)


class Recovery:
    def __init__(self, obs: Observed, cfg: OperatorConfig, spec: RunSpec | None) -> None:
        self.obs = obs
        self.cfg = cfg
        self.spec = spec
        self.old: dict[str, Any] = {k: copy.deepcopy(obs.status.get(k)) for k in OWNED}
        self.st: dict[str, Any] = {
            k: v for k, v in copy.deepcopy(self.old).items() if v is not None
        }
        self.history: list[dict[str, Any]] = st_.attempts_of(obs.status)
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.metrics: list[MetricEvent] = []
        self._requeue: float = cfg.resync_seconds
        self.prices: st_.PriceSource = obs.prices if obs.prices is not None else DEFAULT_PRICES
        self.terminal_now = False

    # --- accessors -----------------------------------------------------------------
    @property
    def phase(self) -> str:
        return str(self.st.get("phase") or "")

    @property
    def progress(self) -> Mapping[str, Any]:
        return dict(self.obs.status.get("progress") or {})

    def entry(self, n: int) -> dict[str, Any] | None:
        return st_.get_attempt(self.history, n)

    def pods_of(self, n: int) -> list[Mapping[str, Any]]:
        out = []
        for p in self.obs.pods:
            labels = (p.get("metadata") or {}).get("labels") or {}
            if str(labels.get(LABEL_ATTEMPT)) == str(n):
                out.append(p)
        return out

    def total_cost(self) -> float:
        archived = self.st.get("archived") or {}
        total: float = st_.total_cost(self.history, archived, self.obs.now, self.prices).total_usd
        return total

    def burn_rate(self, entry: Mapping[str, Any]) -> float:
        """USD per second an attempt shaped like ``entry`` burns while it runs."""
        probe = {**entry, "startedAt": fmt_time(self.obs.now), "attempt": entry.get("attempt", 0)}
        probe = {k: v for k, v in probe.items() if k not in ("spotUSD", "stoppedAt", "endedAt")}
        hour = self.obs.now + dt.timedelta(hours=1)
        return st_.entry_cost(probe, hour, self.prices).total_usd / 3600.0

    def budget_warned(self) -> bool:
        cond = st_.get_condition(self.st.get("conditions") or [], "WithinBudget") or {}
        return cond.get("reason") in ("BudgetWarning", "BudgetExceeded")

    def next_entry_preview(self, n: int) -> dict[str, Any]:
        """The history entry attempt ``n`` would get (to price it before creating it)."""
        spec = self.spec
        assert spec is not None
        last = self.entry(n - 1) or {}
        return {
            "attempt": n,
            "capacityType": spec.capacity_type,
            "nodes": spec.nodes,
            "gpus": spec.gpus_per_node,
            "instanceType": last.get("instanceType") or spec.instance_types[0],
            "zones": last.get("zones"),
        }

    # --- mutations -----------------------------------------------------------------
    def update(self, n: int, **fields: Any) -> None:
        """Set (or, with None, remove) fields of attempt ``n``'s history entry."""
        entry = self.entry(n) or {"attempt": n}
        entry.update(fields)
        self.history = st_.upsert_attempt(self.history, entry)

    def adopt(self, n: int) -> None:
        """A PyTorchJob exists that status does not know (status lost or restored): take it
        over as the live attempt instead of creating another."""
        job = self.obs.jobs.get(n) or {}
        created = (job.get("metadata") or {}).get("creationTimestamp") or fmt_time(self.obs.now)
        spec = self.spec
        self.update(
            n,
            createdAt=created,
            capacityType=spec.capacity_type if spec else "spot",
            nodes=spec.nodes if spec else 1,
            gpus=spec.gpus_per_node if spec else 0,
        )
        self.st["attempt"] = n

    def record(self, n: int, outcome: str, reason: str, message: str, **fields: Any) -> None:
        """The outcome of attempt ``n``: written before anything acts on it."""
        self.update(
            n,
            outcome=outcome,
            reason=reason,
            message=message[:1024],
            endedAt=fmt_time(self.obs.now),
            unschedulableSince=None,
            configErrorSince=None,
            **fields,
        )

    def schedule_next(self, n: int, why: str) -> None:
        losses = st_.consecutive_losses(self.history, self.cfg.backoff_reset_seconds)
        delay = st_.backoff_seconds(losses, self.cfg, self.obs.rand)
        due = self.obs.now + dt.timedelta(seconds=delay)
        self.update(n, nextAttemptAt=fmt_time(due))
        self.st["message"] = f"{why}; attempt {n + 1} after a {delay:.1f}s backoff"

    def fail_run(self, reason: str, message: str) -> None:
        self.st["phase"] = "Failed"
        self.st["message"] = message
        self.st["completionTime"] = fmt_time(self.obs.now)
        self.set_condition("Failed", True, reason, message)
        self.event("Warning", reason, message)
        self.terminal_now = True

    def succeed_run(self, message: str) -> None:
        self.st["phase"] = "Succeeded"
        self.st["message"] = message
        self.st["completionTime"] = fmt_time(self.obs.now)
        self.set_condition("Succeeded", True, "Completed", message)
        self.event("Normal", "Succeeded", message)
        self.terminal_now = True

    def set_condition(self, ctype: str, status: bool, reason: str, message: str) -> None:
        self.st["conditions"] = st_.set_condition(
            self.st.get("conditions") or [],
            ctype,
            status,
            reason,
            message,
            self.obs.now,
            self.obs.ref.generation,
        )

    def event(self, etype: str, reason: str, message: str, key: str | None = None) -> None:
        self.events.append(Event(etype, reason, message, key))

    def metric(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.metrics.append(MetricEvent(name, labels, value))

    def requeue(self, seconds: float) -> None:
        self._requeue = min(self._requeue, max(0.5, seconds))

    # --- children ------------------------------------------------------------------
    def create_job(self, n: int) -> None:
        spec = self.spec
        assert spec is not None
        entry = self.entry(n) or {}
        ref = self.obs.ref
        avoid = set(self.obs.interrupted_nodes) | set(
            st_.recent_interrupted_nodes(self.history, self.obs.now, self.cfg.avoid_nodes_seconds)
        )
        objs = [
            builders.build_pvc(ref, spec),
            builders.build_service_account(ref),
            builders.build_role(ref),
            builders.build_role_binding(ref),
        ]
        self.actions.append(EnsureObjects(tuple(o for o in objs if o is not None)))
        self.actions.append(
            CreateJob(
                builders.build_pytorchjob(
                    ref,
                    spec,
                    attempt=n,
                    capacity_type=str(entry.get("capacityType") or spec.capacity_type),
                    interval_seconds=int(entry.get("checkpointIntervalSeconds") or 900),
                    avoid_nodes=sorted(avoid),
                )
            )
        )

    def _node_gone(self, pod: Mapping[str, Any]) -> bool:
        """The pod's node no longer exists: no kubelet will ever stop it or confirm it.

        An unreachable node that still exists may yet run the pod (a partition): its pods
        are only force-deleted once their grace period is long over, so that two gangs
        never write the same checkpoint folder."""
        name = (pod.get("spec") or {}).get("nodeName")
        if not name:
            return False
        node = self.obs.nodes.get(name)
        return node is not None and not node.exists

    def stop_pods(self, n: int) -> None:
        """SIGTERM every rank of attempt ``n`` at once (graceful delete). Pods on a node
        that is gone are force-deleted: no kubelet will ever confirm their end."""
        grace = self.spec.termination_grace_period_seconds if self.spec else DEFAULT_GRACE
        graceful, force = [], []
        for p in self.pods_of(n):
            meta = p.get("metadata") or {}
            if is_terminal(p):
                continue  # already ended; the job's deletion lets the GC remove it
            if self._node_gone(p):
                force.append(str(meta.get("name")))
            elif not meta.get("deletionTimestamp"):
                graceful.append(str(meta.get("name")))
            else:
                deadline = parse_time(meta.get("deletionTimestamp"))
                overdue = self.cfg.stop_timeout_slack_seconds
                if deadline and (self.obs.now - deadline).total_seconds() > overdue:
                    force.append(str(meta.get("name")))
        if graceful:
            self.actions.append(DeletePods(tuple(sorted(graceful)), int(grace)))
        if force:
            self.actions.append(DeletePods(tuple(sorted(force)), 0))

    def stop_gang(self, n: int, terminal: bool = False) -> None:
        """End attempt ``n``. The PyTorchJob goes first so that the training operator does
        not recreate the pods we delete. A finished job of a finished run is kept (its
        pods hold the logs); only its still-running pods are stopped."""
        job = self.obs.jobs.get(n)
        finished = (self.entry(n) or {}).get("outcome") == st_.SUCCEEDED or any(
            c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True"
            for c in ((job or {}).get("status") or {}).get("conditions") or []
        )
        if job is not None and not (terminal and finished):
            self.actions.append(DeleteJob(job_name(self.obs.ref.name, n)))
        self.stop_pods(n)

    def gang_gone(self, n: int) -> bool:
        """No pod of attempt ``n`` can still run (or still be writing its checkpoint)."""
        return all(is_terminal(p) or self._node_gone(p) for p in self.pods_of(n))

    def finish_attempt(self, n: int) -> None:
        """Every pod of attempt ``n`` is gone: fix its lost work and cost for good."""
        entry = self.entry(n) or {"attempt": n}
        fields: dict[str, Any] = {"stoppedAt": fmt_time(self.obs.now)}
        if entry.get("outcome") == st_.PREEMPTED:
            lost = st_.final_lost_work(entry, self.progress)
            fields["lostWorkSeconds"] = round(lost, 1)
            last = dict(self.st.get("lastPreemption") or {})
            if last.get("attempt") == n:
                last["lostWorkSeconds"] = round(lost, 1)
                self.st["lastPreemption"] = last
            self.metric("lost_work", value=lost, signal=str(entry.get("reason")))
        final = {**entry, **fields}
        fields.update(st_.entry_cost(final, self.obs.now, self.prices).to_attempt_fields())
        self.update(n, **fields)
        due = parse_time(entry.get("nextAttemptAt"))
        wait = (
            f"; next attempt in {max(0.0, (due - self.obs.now).total_seconds()):.0f}s"
            if due
            else ""
        )
        self.event("Normal", "AttemptStopped", f"attempt {n}: every pod is gone{wait}")

    # --- result --------------------------------------------------------------------
    def _phase(self) -> str:
        if self.phase in ("Succeeded", "Failed"):
            return self.phase
        spec = self.spec
        live = int(self.st.get("attempt") or 0)
        entry = self.entry(live) if live else None
        suspended = bool(spec and spec.suspend)
        if entry is None:
            return "Suspended" if suspended else "Pending"
        if entry.get("outcome"):
            if entry["outcome"] == st_.BUDGET_EXCEEDED:
                return "Suspended"
            if suspended and entry.get("stoppedAt"):
                return "Suspended"
            return (
                "Pending" if entry["outcome"] == st_.SUSPENDED and not suspended else "Recovering"
            )
        if entry.get("startedAt"):
            return "Running"
        prev = self.entry(live - 1)
        return "Recovering" if prev and prev.get("outcome") in _RECOVERING_FROM else "Pending"

    def _conditions(self, phase: str) -> None:
        msg = str(self.st.get("message") or phase)
        running = phase == "Running"
        self.set_condition("Running", running, "AttemptRunning" if running else phase, msg)
        cause = next(
            (
                str(e["outcome"])
                for e in reversed(self.history)
                if e.get("outcome") in _RECOVERING_FROM
            ),
            phase,
        )
        recovering = phase == "Recovering"
        self.set_condition("Recovering", recovering, cause if recovering else phase, msg)
        suspended = phase == "Suspended"
        live = self.entry(int(self.st.get("attempt") or 0)) or {}
        why = "BudgetExceeded" if live.get("outcome") == st_.BUDGET_EXCEEDED else phase
        self.set_condition("Suspended", suspended, why, msg)

    def finish(self) -> Decision:
        phase = self._phase()
        self.st["phase"] = phase
        self.st.setdefault("preemptions", 0)
        self.st.setdefault("failures", 0)
        self.st.setdefault("attempt", 0)
        self._conditions(phase)
        history, archived = st_.trim_history(
            self.history, self.st.get("archived") or {}, self.cfg.history_limit
        )
        self.st["attempts"] = history
        if archived:
            self.st["archived"] = archived
        self.st["observedGeneration"] = self.obs.ref.generation
        pc = self.obs.pricing_condition
        if pc:
            self.set_condition(pc["type"], pc["status"] == "True", pc["reason"], pc["message"])
        cost = st_.total_cost(history, archived, self.obs.now, self.prices)
        self._update_cost(cost, phase)
        patch = {k: self.st.get(k) for k in OWNED if self.st.get(k) != self.old.get(k)}
        prog = self.obs.status.get("progress") or {}
        return Decision(
            status=patch or None,
            actions=self.actions,
            events=self.events,
            metrics=self.metrics,
            requeue_after=self._requeue,
            phase=phase,
            checkpoint_time=prog.get("checkpointTime"),
            gauges=self._gauges(cost),
        )

    def _gauges(self, cost: Cost) -> RunGauges:
        live = self.entry(int(self.st.get("attempt") or 0)) or {}
        interval = live.get("checkpointIntervalSeconds")
        max_usd = self.spec.max_usd if self.spec else None
        equivalent = cost.on_demand_equivalent_usd
        return RunGauges(
            spot_usd=cost.spot_usd,
            on_demand_usd=cost.on_demand_usd,
            savings_ratio=1.0 - cost.total_usd / equivalent if equivalent > 0 else None,
            budget_used_ratio=cost.total_usd / max_usd if max_usd else None,
            checkpoint_interval_seconds=float(interval) if interval else None,
        )

    def _update_cost(self, cost: Cost, phase: str) -> None:
        new = cost.to_status()
        old = dict(self.old.get("cost") or {})
        old_at = parse_time(old.pop("updatedAt", None))
        changed = any(self.st.get(k) != self.old.get(k) for k in OWNED if k != "cost")
        due = (
            old_at is None
            or (self.obs.now - old_at).total_seconds() >= self.cfg.cost_update_seconds
        )
        if new != old and (changed or due):
            self.st["cost"] = {**new, "updatedAt": fmt_time(self.obs.now)}
        if phase == "Running":
            self.requeue(self.cfg.cost_update_seconds)
