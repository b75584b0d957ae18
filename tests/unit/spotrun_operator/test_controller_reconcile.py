"""The recovery state machine, driven step by step with observed worlds."""

from __future__ import annotations

from controller_fakes import (
    CFG,
    REF,
    cond,
    gang,
    job,
    merge,
    node,
    observed,
    pod,
    running_status,
    ts,
)

from spotrun_dev import traces
from spotrun_operator.decisions.children import COLLECTOR_GRACE_SECONDS
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.model.plan import CreateJob, Decision, DeleteJob, DeletePods, EnsureObjects


def env_of(d: Decision) -> dict[str, str]:
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    tpl = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return {e["name"]: e["value"] for e in tpl["spec"]["containers"][0]["env"] if "value" in e}


def test_first_attempt_is_created() -> None:
    d = decide(observed(), CFG)
    assert d.status is not None
    assert d.status["attempt"] == 1 and d.status["phase"] == "Pending"
    kinds = [type(a) for a in d.actions]
    assert kinds == [EnsureObjects, CreateJob]
    create = d.actions[1]
    assert isinstance(create, CreateJob) and create.body["metadata"]["name"] == "llm-a1"
    assert env_of(d)["SPOTRUN_ATTEMPT"] == "1"
    assert [e.reason for e in d.events] == ["AttemptCreated"]


def test_gang_running() -> None:
    st = running_status()
    assert st["phase"] == "Running"
    entry = st["attempts"][0]
    assert entry["startedAt"] == ts(5) and entry["zones"] == ["us-east-1a", "us-east-1b"]
    assert cond(st, "Running")["status"] == "True"
    assert cond(st, "CapacityAvailable")["status"] == "True"
    assert cond(st, "Running")["observedGeneration"] == REF.generation


def test_preemption_counted_once_then_attempt_2_resumes() -> None:
    st = running_status()
    tainted = [node("n1"), node("n2", taints=(traces.NTH_SPOT_ITN,), zone="us-east-1b")]
    d = decide(observed(now=65, status=st, jobs={1: job(1)}, pods=gang(1), nodes=tainted), CFG)
    st = merge(st, d)
    assert (st["preemptions"], st["failures"], st["phase"]) == (1, 0, "Recovering")
    lp = st["lastPreemption"]
    assert (lp["signal"], lp["node"], lp["zone"]) == ("spot-interruption", "n2", "us-east-1b")
    assert lp["lostWorkSeconds"] == 60.0  # no checkpoint yet: since the gang ran
    # Deleting the job stops the gang: the garbage collector deletes its pods, each with
    # its grace period (no write per pod).
    assert d.actions == [DeleteJob("llm-a1")]
    assert [m.name for m in d.metrics] == ["preemption"]
    assert cond(st, "Recovering")["reason"] == "Preempted"
    # One event for the whole recovery: it names the next attempt, which announces nothing.
    assert [e.reason for e in d.events] == ["Preempted"]
    assert "attempt 2 resumes from the newest checkpoint" in d.events[0].message

    # The same world again (the operator restarted, or another event): nothing is counted
    # twice, the gang is stopped again (idempotent deletes).
    again = decide(observed(now=66, status=st, jobs={1: job(1)}, pods=gang(1), nodes=tainted), CFG)
    assert merge(st, again)["preemptions"] == 1 and not again.metrics
    # The job gone and its pods not stopping yet: the garbage collector gets its time to
    # stop them (no write of ours), then, when it is that late, they are stopped here.
    soon = decide(observed(now=66, status=st, jobs={}, pods=gang(1), nodes=tainted), CFG)
    assert not [a for a in soon.actions if isinstance(a, DeletePods)]
    assert soon.requeue_after <= COLLECTOR_GRACE_SECONDS - 1
    late = 65 + COLLECTOR_GRACE_SECONDS
    behind = decide(observed(now=late, status=st, jobs={}, pods=gang(1), nodes=tainted), CFG)
    assert DeletePods(("llm-a1-master-0", "llm-a1-worker-0"), 110) in behind.actions
    # A second node of the gang interrupted a second later: still one preemption.
    both = [node("n1", taints=(traces.NTH_SPOT_ITN,)), tainted[1]]
    d = decide(observed(now=66, status=st, jobs={}, pods=gang(1, deleting=True), nodes=both), CFG)
    st = merge(st, d)
    assert st["preemptions"] == 1

    # Gang gone: the attempt is finished, the backoff (10 s from the signal) runs.
    d = decide(observed(now=70, status=st, nodes=both), CFG)
    st = merge(st, d)
    assert st["attempts"][0]["stoppedAt"] == ts(70)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    assert 4 <= d.requeue_after <= 5.1
    d = decide(observed(now=76, status=st, nodes=both, interrupted_nodes=["n1"]), CFG)
    st = merge(st, d)
    assert st["attempt"] == 2 and env_of(d)["SPOTRUN_ATTEMPT"] == "2"
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    assert create.body["metadata"]["name"] == "llm-a2"
    assert not d.events
    terms = create.body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["affinity"][
        "nodeAffinity"
    ]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    avoid = [e for e in terms[0]["matchExpressions"] if e["operator"] == "NotIn"]
    assert avoid[0]["values"] == ["n1", "n2"]
    assert st["phase"] == "Recovering"

    # Attempt 2 runs: recovery time is observed from the signal.
    d = decide(
        observed(
            now=80,
            status=st,
            jobs={2: job(2)},
            pods=gang(2, ("n3", "n4")),
            nodes=[node("n3"), node("n4")],
        ),
        CFG,
    )
    st = merge(st, d)
    assert st["phase"] == "Running" and not d.events
    recovery = [m for m in d.metrics if m.name == "recovery"]
    assert recovery and recovery[0].value == 15.0
    assert recovery[0].labels == {"signal": "spot-interruption"}


def test_crash_after_status_write_before_create_recreates_the_same_job() -> None:
    st = merge({}, decide(observed(), CFG))
    d = decide(observed(now=3, status=st), CFG)  # the job never got created
    assert any(
        isinstance(a, CreateJob) and a.body["metadata"]["name"] == "llm-a1" for a in d.actions
    )
    assert merge(st, d)["attempt"] == 1


def test_unknown_job_is_adopted_not_duplicated() -> None:
    st = running_status()
    d = decide(
        observed(
            now=10,
            status=st,
            jobs={1: job(1), 2: job(2)},
            pods=gang(2, ("n3", "n4")),
            nodes=[node("n3"), node("n4")],
        ),
        CFG,
    )
    st2 = merge(st, d)
    assert st2["attempt"] == 2
    assert DeleteJob("llm-a1") in d.actions
    assert not any(isinstance(a, CreateJob) for a in d.actions)


def test_failures_are_retried_then_fail_the_run_and_never_count_preemptions() -> None:
    st = running_status()
    for n in (1, 2, 3):
        pods = gang(n)
        pods[0] = pod(
            f"llm-a{n}-master-0",
            attempt=n,
            node_name="n1",
            phase="Failed",
            exit_code=1,
            finished=100 * n,
        )
        now = 100 * n + 10
        d = decide(observed(now=now, status=st, jobs={n: job(n, "Failed")}, pods=pods), CFG)
        st = merge(st, d)
        assert st["failures"] == n and st["preemptions"] == 0
        if n < 3:
            d = decide(observed(now=now + 60, status=st), CFG)  # gone + backoff elapsed
            st = merge(st, d)
            st = merge(st, decide(observed(now=now + 61, status=st), CFG))
            assert st["attempt"] == n + 1
    assert st["phase"] == "Failed"
    assert cond(st, "Failed")["reason"] == "MaxFailuresReached"
    # A failed job of a failed run is kept for its logs; only survivors are stopped.
    assert DeleteJob("llm-a3") not in d.actions


def test_oom_is_a_failure() -> None:
    st = running_status()
    pods = gang(1)
    pods[1] = pod(
        "llm-a1-worker-0",
        node_name="n2",
        master=False,
        phase="Failed",
        exit_code=137,
        term_reason="OOMKilled",
        finished=10,
    )
    d = decide(observed(now=20, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    assert (st["failures"], st["preemptions"]) == (1, 0)
    assert st["attempts"][0]["reason"] == "OOMKilled"
    assert [m.labels for m in d.metrics] == [{"reason": "OOMKilled"}]


def test_image_pull_error_fails_after_the_grace() -> None:
    st = merge({}, decide(observed(), CFG))
    pods = [pod("m", node_name="n1", phase="Pending", waiting="ImagePullBackOff")]
    d = decide(observed(now=2, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    assert st["phase"] == "Pending" and [e.reason for e in d.events] == ["ConfigurationError"]
    d = decide(observed(now=33, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    assert st["phase"] == "Failed"
    failed = cond(st, "Failed")
    assert failed["reason"] == "ConfigurationError" and "ImagePullBackOff" in failed["message"]
    assert DeleteJob("llm-a1") in d.actions  # pods of an unfinished job would be recreated
    assert st["failures"] == 0


def test_missing_secret_is_a_configuration_error_before_any_job() -> None:
    d = decide(observed(missing_refs=["Secret hf-token"]), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    st = merge({}, d)
    d = decide(observed(now=31, status=st, missing_refs=["Secret hf-token"]), CFG)
    st = merge(st, d)
    assert st["phase"] == "Failed" and "Secret hf-token" in cond(st, "Failed")["message"]


def test_unschedulable_then_on_demand_fallback_then_spot_again() -> None:
    over = {"capacity": {"type": "spot", "onDemandFallbackAfter": "60s"}}
    st = merge({}, decide(observed(spec_over=over), CFG))
    msg = "0/10 nodes are available: 8 Insufficient nvidia.com/gpu."
    pods = [pod("m", node_name=None, phase="Pending", unschedulable=msg)]
    d = decide(observed(now=1, spec_over=over, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    capacity = cond(st, "CapacityAvailable")
    assert (capacity["status"], capacity["message"]) == ("False", msg)
    assert d.requeue_after <= 60
    d = decide(observed(now=62, spec_over=over, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    assert st["attempts"][0]["outcome"] == "CapacityFallback"
    assert (st["preemptions"], st["failures"]) == (0, 0)
    st = merge(st, decide(observed(now=63, spec_over=over, status=st), CFG))  # gone
    d = decide(observed(now=64, spec_over=over, status=st), CFG)
    st = merge(st, d)
    assert st["attempt"] == 2 and st["attempts"][-1]["capacityType"] == "on-demand"
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    tpl = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    exprs = tpl["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert exprs[0] == {
        "key": "eks.amazonaws.com/capacityType",
        "operator": "In",
        "values": ["ON_DEMAND"],
    }
    # The on-demand attempt is preempted (e.g. by the scheduler): the next one is spot again.
    gone = [pod("m", attempt=2, node_name="n1", disruption="PreemptionByScheduler")]
    st = merge(
        st, decide(observed(now=70, spec_over=over, status=st, jobs={2: job(2)}, pods=gone), CFG)
    )
    st = merge(st, decide(observed(now=71, spec_over=over, status=st), CFG))
    st = merge(st, decide(observed(now=200, spec_over=over, status=st), CFG))
    assert st["attempt"] == 3 and st["attempts"][-1]["capacityType"] == "spot"


def test_suspend_and_resume() -> None:
    st = running_status()
    d = decide(
        observed(now=10, spec_over={"suspend": True}, status=st, jobs={1: job(1)}, pods=gang(1)),
        CFG,
    )
    st = merge(st, d)
    assert DeleteJob("llm-a1") in d.actions and st["attempts"][0]["outcome"] == "Suspended"
    st = merge(st, decide(observed(now=12, spec_over={"suspend": True}, status=st), CFG))
    assert st["phase"] == "Suspended" and cond(st, "Suspended")["status"] == "True"
    assert (st["preemptions"], st["failures"]) == (0, 0)
    d = decide(observed(now=13, status=st), CFG)
    st = merge(st, d)
    assert st["attempt"] == 2 and any(isinstance(a, CreateJob) for a in d.actions)


def test_success() -> None:
    st = running_status()
    pods = [
        pod("m", node_name="n1", phase="Succeeded", exit_code=0),
        pod("w", node_name="n2", master=False, phase="Succeeded", exit_code=0),
    ]
    d = decide(observed(now=50, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    assert st["phase"] == "Succeeded" and cond(st, "Succeeded")["status"] == "True"
    assert st["completionTime"] == ts(50)
    assert not any(isinstance(a, CreateJob) for a in d.actions)


def test_max_preemptions() -> None:
    st = running_status()
    tainted = [node("n1", taints=(traces.NTH_SPOT_ITN,)), node("n2")]
    d = decide(
        observed(
            now=20,
            spec_over={"maxPreemptions": 1},
            status=st,
            jobs={1: job(1)},
            pods=gang(1),
            nodes=tainted,
        ),
        CFG,
    )
    st = merge(st, d)
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "MaxPreemptionsReached"


def test_a_job_being_deleted_is_not_deleted_again() -> None:
    deleting = job(1)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:30Z"
    tainted = [node("n1"), node("n2", taints=(traces.NTH_SPOT_ITN,))]
    world = {"status": running_status(), "pods": gang(1), "nodes": tainted}
    first = decide(observed(now=65, jobs={1: job(1)}, **world), CFG)
    assert DeleteJob("llm-a1") in first.actions
    again = decide(observed(now=65, jobs={1: deleting}, **world), CFG)
    assert not any(isinstance(a, DeleteJob) for a in again.actions)
