"""spec.queueName: every attempt is admitted through Kueue, and a Kueue preemption is its
own outcome (no budget spent, no competing attempt). The Workload shapes follow
sigs.k8s.io/kueue apis/kueue/v1beta1/workload_types.go (conditions QuotaReserved,
Admitted, Evicted with reason Preempted)."""

from __future__ import annotations

from typing import Any

from controller_fakes import CFG, cond, gang, job, merge, observed, ts

from spotrun_operator.decisions.queueing import admission_of
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.model.plan import CreateJob, DeleteJob

QUEUE = {"queueName": "team-a"}


def queued_job(attempt: int, suspended: bool) -> dict[str, Any]:
    body: dict[str, Any] = job(attempt)
    body["metadata"]["uid"] = f"job-uid-{attempt}"
    body["spec"] = {"runPolicy": {"cleanPodPolicy": "None", "suspend": suspended}}
    return body


def workload(*conditions: tuple[str, str, str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "pytorchjob-llm-a1-3c5f1"},
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions
            ]
        },
    }


PENDING = workload(
    (
        "QuotaReserved",
        "False",
        "Pending",
        "couldn't assign flavors to pod set master: insufficient unused quota for "
        "nvidia.com/gpu in flavor spot, 8 more needed",
    )
)
ADMITTED = workload(
    ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue spot-fleet"),
    ("Admitted", "True", "Admitted", "The workload is admitted"),
)
PREEMPTED = workload(
    ("QuotaReserved", "False", "Preempted", "Preempted to accommodate a higher priority Workload"),
    ("Admitted", "False", "NoReservation", "The workload has no reservation"),
    ("Evicted", "True", "Preempted", "Preempted to accommodate a higher priority Workload"),
)


def created() -> dict[str, Any]:
    d = decide(observed(spec_over=QUEUE), CFG)
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    meta, run_policy = create.body["metadata"], create.body["spec"]["runPolicy"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert run_policy["suspend"] is True  # Kueue unsuspends it on admission
    st: dict[str, Any] = merge({}, d)
    return st


def test_without_a_queue_the_job_is_neither_labelled_nor_suspended() -> None:
    d = decide(observed(), CFG)
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    assert "kueue.x-k8s.io/queue-name" not in create.body["metadata"]["labels"]
    assert "suspend" not in create.body["spec"]["runPolicy"]


def test_a_run_waits_in_the_queue_pending_with_kueues_reason() -> None:
    st = created()
    obs = observed(
        now=5, spec_over=QUEUE, status=st, jobs={1: queued_job(1, True)}, workloads={1: PENDING}
    )
    d = decide(obs, CFG)
    st = merge(st, d)
    assert st["phase"] == "Pending" and not d.actions
    admitted = cond(st, "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "Pending"
    assert "insufficient unused quota for nvidia.com/gpu" in admitted["message"]
    assert "team-a" in admitted["message"]
    # Waiting for the queue is not missing capacity: no fallback timer runs.
    assert "unschedulableSince" not in st["attempts"][0]


def test_no_workload_yet_says_kueue_has_not_made_one() -> None:
    st = created()
    d = decide(observed(now=5, spec_over=QUEUE, status=st, jobs={1: queued_job(1, True)}), CFG)
    admitted = cond(merge(st, d), "Admitted")
    assert admitted["status"] == "False" and "kubeflow.org/pytorchjob" in admitted["message"]


def test_admitted_attempt_runs_like_any_other() -> None:
    st = created()
    obs = observed(
        now=5,
        spec_over=QUEUE,
        status=st,
        jobs={1: queued_job(1, False)},
        workloads={1: ADMITTED},
        pods=gang(1),
    )
    st = merge(st, decide(obs, CFG))
    assert st["phase"] == "Running"
    assert cond(st, "Admitted")["status"] == "True"


def running() -> dict[str, Any]:
    st = created()
    obs = observed(
        now=5,
        spec_over=QUEUE,
        status=st,
        jobs={1: queued_job(1, False)},
        workloads={1: ADMITTED},
        pods=gang(1),
    )
    ran: dict[str, Any] = merge(st, decide(obs, CFG))
    return ran


def test_kueue_preemption_spends_no_budget_and_waits_for_readmission() -> None:
    st = running()
    # Kueue suspended the job; the training operator is deleting the pods (graceful).
    obs = observed(
        now=65,
        spec_over=QUEUE,
        status=st,
        jobs={1: queued_job(1, True)},
        workloads={1: PREEMPTED},
        pods=gang(1, deleting=True),
    )
    d = decide(obs, CFG)
    st = merge(st, d)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("QueuePreempted", "queue-preemption")
    assert "higher priority" in entry["message"]
    assert (st.get("preemptions") or 0, st.get("failures") or 0) == (0, 0)
    assert st["queuePreemptions"] == 1
    assert st["phase"] == "Pending"
    assert [e.reason for e in d.events] == ["QueuePreempted"]
    assert [(m.name, dict(m.labels)) for m in d.metrics] == [
        ("queue_preemption", {"reason": "Preempted"})
    ]
    assert DeleteJob("llm-a1") in d.actions
    assert not any(isinstance(a, CreateJob) for a in d.actions)

    # Seen again (a restart): counted once.
    again = decide(
        observed(
            now=66,
            spec_over=QUEUE,
            status=st,
            jobs={1: queued_job(1, True)},
            workloads={1: PREEMPTED},
            pods=gang(1, deleting=True),
        ),
        CFG,
    )
    assert merge(st, again)["queuePreemptions"] == 1 and not again.metrics

    # Every pod gone: the next attempt is created at once (no backoff), suspended, queued.
    d = decide(observed(now=70, spec_over=QUEUE, status=st), CFG)
    st = merge(st, d)
    assert st["attempts"][0]["stoppedAt"] == ts(70)
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    assert create.body["metadata"]["name"] == "llm-a2"
    assert create.body["spec"]["runPolicy"]["suspend"] is True
    assert st["phase"] == "Pending" and st["attempt"] == 2


def test_suspension_without_an_evicted_condition_is_still_kueues() -> None:
    st = running()
    obs = observed(now=30, spec_over=QUEUE, status=st, jobs={1: queued_job(1, True)}, pods=gang(1))
    st = merge(st, decide(obs, CFG))
    assert st["attempts"][0]["outcome"] == "QueuePreempted"
    assert cond(st, "Admitted")["reason"] == "Suspended"


def test_a_job_read_just_before_kueue_unsuspended_it_is_no_preemption() -> None:
    """Jobs are read before pods and Workloads: a job still suspended beside the pods the
    training operator just made and an admitted, not evicted Workload is a start."""
    st = created()
    obs = observed(
        now=1,
        spec_over=QUEUE,
        status=st,
        jobs={1: queued_job(1, True)},
        workloads={1: ADMITTED},
        pods=gang(1),
    )
    d = decide(obs, CFG)
    st = merge(st, d)
    assert "outcome" not in st["attempts"][0]
    assert not st.get("queuePreemptions") and not d.events and not d.metrics
    assert not any(isinstance(a, DeleteJob) for a in d.actions)
    assert d.requeue_after <= 1.0

    # Read again once the job shows Kueue's unsuspend: it runs.
    obs = observed(
        now=2,
        spec_over=QUEUE,
        status=st,
        jobs={1: queued_job(1, False)},
        workloads={1: ADMITTED},
        pods=gang(1),
    )
    assert merge(st, decide(obs, CFG))["phase"] == "Running"


def test_admission_of_reads_the_job_and_the_workload() -> None:
    adm = admission_of(queued_job(1, True), PREEMPTED)
    assert adm.suspended and not adm.admitted
    assert (adm.evicted_reason, adm.workload) == ("Preempted", "pytorchjob-llm-a1-3c5f1")
    adm = admission_of(queued_job(1, False), ADMITTED)
    assert adm.admitted and not adm.suspended and adm.evicted_reason == ""
    assert admission_of(queued_job(1, True), None).workload == ""
