"""Kueue admission of the live attempt (``spec.queueName``), pure.

Each attempt's PyTorchJob is created suspended with the ``kueue.x-k8s.io/queue-name``
label; Kueue makes a Workload for it and unsuspends the job once the Workload is
admitted (sigs.k8s.io/kueue pkg/controller/jobframework/reconciler.go, ``startJob``). When
Kueue preempts or evicts the Workload it suspends the job again (``stopJob``), and the
training operator deletes its pods with their grace period (kubeflow/training-operator
pkg/controller.v1/common/job.go, ``IsJobSuspended`` -> ``CleanUpResources``): the ranks get
SIGTERM and save, exactly as for a spot notice.

spotrun does not fight the queue: while the live attempt is suspended nothing is
classified (the pods the training operator deletes are not a preemption), the run waits
in phase Pending with an ``Admitted=False`` condition carrying Kueue's own message, and a
Kueue preemption ends the attempt as ``QueuePreempted`` (reason ``queue-preemption``),
which spends neither ``maxPreemptions`` nor ``maxFailures`` and has no backoff. The next
attempt is created suspended at once and runs when Kueue admits it again, from the
checkpoint the preempted gang wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from spotrun_api.enums import ConditionType, Outcome
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import Attempt
from spotrun_operator.decisions.children import stop_gang
from spotrun_operator.decisions.draft import Draft
from spotrun_operator.decisions.transitions import record
from spotrun_operator.facts.common import attempt_of, fmt_time
from spotrun_operator.model import reducers

QUEUE_PREEMPTION: Final = "queue-preemption"
# Workload condition types (sigs.k8s.io/kueue apis/kueue/v1beta1/workload_types.go).
_QUOTA_RESERVED: Final = "QuotaReserved"
_ADMITTED: Final = "Admitted"
_EVICTED: Final = "Evicted"
# The Evicted condition's reasons (same file, WorkloadEvictedBy*, WorkloadDeactivated), and
# "Suspended" when the job was suspended with no Evicted condition to say why: the bounded
# label values of spotrun_queue_preemptions_total.
KUEUE_EVICTION_REASONS: Final = frozenset(
    {
        "Preempted",
        "PodsReadyTimeout",
        "AdmissionCheck",
        "ClusterQueueStopped",
        "LocalQueueStopped",
        "NodeFailures",
        "Deactivated",
        "Suspended",
    }
)


@dataclass(frozen=True)
class Admission:
    """What Kueue says about one attempt's PyTorchJob."""

    suspended: bool  # the job's spec.runPolicy.suspend
    workload: str = ""  # the Workload's name; "" until Kueue made one
    admitted: bool = False
    reason: str = ""  # of the Workload's QuotaReserved (or Admitted) condition
    message: str = ""
    evicted_reason: str = ""  # Evicted=True: Preempted, InactiveWorkload, PodsReadyTimeout...
    evicted_message: str = ""


def _condition(workload: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def admission_of(job: Mapping[str, Any], workload: Mapping[str, Any] | None) -> Admission:
    """The admission of ``job`` from the job and Kueue's Workload of it (None: none yet)."""
    run_policy = (job.get("spec") or {}).get("runPolicy") or {}
    suspended = bool(run_policy.get("suspend"))
    if workload is None:
        return Admission(suspended=suspended)
    admitted = _condition(workload, _ADMITTED)
    reserved = _condition(workload, _QUOTA_RESERVED)
    evicted = _condition(workload, _EVICTED)
    shown = admitted if admitted.get("status") == "True" else reserved or admitted
    is_evicted = evicted.get("status") == "True"
    return Admission(
        suspended=suspended,
        workload=str((workload.get("metadata") or {}).get("name") or ""),
        admitted=admitted.get("status") == "True",
        reason=str(shown.get("reason") or ""),
        message=str(shown.get("message") or ""),
        evicted_reason=str(evicted.get("reason") or "") if is_evicted else "",
        evicted_message=str(evicted.get("message") or "") if is_evicted else "",
    )


def held(d: Draft, spec: TrainingRunSpec, n: int, entry: Attempt, job: Mapping[str, Any]) -> bool:
    """True when Kueue holds attempt ``n`` (waiting for admission, or taken back): the
    draft says so and nothing else is decided about the attempt now."""
    queue = spec.queue_name
    if not queue:
        return False
    adm = admission_of(job, d.obs.workloads.get(n))
    if not adm.suspended:
        d.set_condition(
            ConditionType.ADMITTED,
            True,
            "Admitted",
            f"Kueue admitted attempt {n} through LocalQueue {queue}"
            + (f" (Workload {adm.workload})" if adm.workload else ""),
        )
        return False
    ran = bool(entry.started_at) or any(attempt_of(p) == n for p in d.obs.deleted_pods)
    if (ran or d.pods_of(n)) and adm.admitted and not adm.evicted_reason:
        _starting(d, n)
    elif ran or d.pods_of(n):
        _queue_preempted(d, n, entry, adm)
    else:
        _waiting(d, n, queue, adm)
    return True


def _starting(d: Draft, n: int) -> None:
    """The job reads suspended, yet its Workload is admitted and not evicted, and pods
    exist: the job was read just before Kueue unsuspended it and the pods just after the
    training operator made them (observe reads jobs, then pods, then Workloads). Kueue
    always sets Evicted before it suspends an admitted job (jobframework reconciler.go,
    ``stopJob`` runs on an Evicted Workload), so this is no preemption: look again."""
    d.say(f"attempt {n}: Kueue admitted its Workload and is starting the job; looking again")
    d.requeue(1.0)


def _waiting(d: Draft, n: int, queue: str, adm: Admission) -> None:
    if adm.workload:
        why = adm.message or adm.reason or "pending"
        message = f"attempt {n} waits in Kueue LocalQueue {queue}: {why}"
    else:
        message = (
            f"attempt {n} waits for Kueue to make a Workload of its PyTorchJob (LocalQueue "
            f"{queue}; is Kueue running with the kubeflow.org/pytorchjob integration?)"
        )
    d.set_condition(ConditionType.ADMITTED, False, adm.reason or "Pending", message)
    d.say(message)
    d.requeue(d.cfg.resync_seconds)


def _queue_preempted(d: Draft, n: int, entry: Attempt, adm: Admission) -> None:
    """Kueue suspended an attempt it had admitted: record it once, let the gang go."""
    why = adm.evicted_reason or "Suspended"
    detail = adm.evicted_message or "Kueue suspended the PyTorchJob"
    message = f"Kueue evicted Workload {adm.workload or '?'} ({why}): {detail}"
    lost = round(reducers.lost_work_seconds(entry, d.progress, fmt_time(d.now)), 1)
    record(
        d,
        n,
        Outcome.QUEUE_PREEMPTED,
        QUEUE_PREEMPTION,
        message,
        next_attempt_at=fmt_time(d.now),
        lost_work_seconds=lost,
    )
    d.status.queue_preemptions = (d.status.queue_preemptions or 0) + 1
    d.set_condition(ConditionType.ADMITTED, False, why, message)
    d.event(
        "Warning",
        "QueuePreempted",
        f"attempt {n}: {message}; the ranks save on SIGTERM; the next attempt waits in the "
        "queue (no budget spent)",
    )
    d.metric("queue_preemption", reason=why)
    d.say(f"attempt {n} preempted by Kueue ({why}); attempt {n + 1} waits for admission")
    stop_gang(d, n)
