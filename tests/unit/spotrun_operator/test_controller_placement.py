"""Where a next attempt may go and when it is created: nodes going away are avoided
outright and healthy nodes behind a preemption only disfavoured; a gang is created only
when every pod can be placed; the training operator giving up on an unplaced gang is
capacity; a job deleted by someone else is never created again; every node lost before
the next attempt is in the attempt's record."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from controller_fakes import CFG, at, gang, job, merge, node, observed, pod, running_status, ts

from spotrun_api import contract
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts import signals
from spotrun_operator.judging.classify import NodeInfo, classify
from spotrun_operator.judging.classify import VerdictKind as Kind
from spotrun_operator.model.plan import CreateJob, Decision, ValidateJob

GPU_TAINT = ("nvidia.com/gpu", "present", "NoSchedule")


def fleet(*names: str, cordoned: tuple[str, ...] = ()) -> dict[str, NodeInfo]:
    """Schedulable spot p4d nodes (8 GPUs, the GPU taint the pods tolerate)."""
    return {
        n: dataclasses.replace(
            node(n), hard_taints=(GPU_TAINT,), gpus=8, unschedulable=n in cordoned
        )
        for n in names
    }


def affinity(d: Decision) -> dict[str, Any]:
    create = next(a for a in d.actions if isinstance(a, CreateJob))
    tpl = create.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return dict(tpl["spec"]["affinity"]["nodeAffinity"])


def required_not_in(d: Decision) -> list[str]:
    terms = affinity(d)["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    found = [e["values"] for e in terms[0]["matchExpressions"] if e["operator"] == "NotIn"]
    return found[0] if found else []


def preferred_not_in(d: Decision) -> list[str]:
    prefs = affinity(d).get("preferredDuringSchedulingIgnoredDuringExecution") or []
    return [v for p in prefs for e in p["preference"]["matchExpressions"] for v in e["values"]]


# --- which nodes are going away (signals.going) -----------------------------------------

GOING: dict[str, dict[str, Any]] = {
    "NTH spot interruption": {"taints": (signals.TAINT_SPOT_ITN,)},
    "NTH rebalance recommendation": {"taints": (signals.TAINT_REBALANCE,)},
    "NTH ASG lifecycle": {"taints": ("aws-node-termination-handler/asg-lifecycle-termination",)},
    "NTH scheduled maintenance": {"taints": (signals.TAINT_SCHEDULED_MAINTENANCE,)},
    "Karpenter disrupted": {"taints": (signals.TAINT_KARPENTER_DISRUPTED,)},
    "Karpenter before v1": {"taints": (signals.TAINT_KARPENTER_DISRUPTION_V1BETA1,)},
    "CA ToBeDeleted": {"taints": (signals.TAINT_CA_TO_BE_DELETED,)},
    "out of service": {"taints": (signals.TAINT_OUT_OF_SERVICE,)},
    "CCM shutdown": {"taints": (signals.TAINT_CLOUD_SHUTDOWN,)},
    "GKE impending termination": {"taints": (signals.TAINT_GKE_IMPENDING,)},
    "AKS node auto-drain": {"taints": (signals.TAINT_AKS_DRAIN,)},
    "being deleted": {"deleting": True},
    "shutting down": {"ready": "False", "ready_message": "node is shutting down"},
}
NOT_GOING: dict[str, dict[str, Any]] = {
    "healthy": {},
    "CA deletion candidate (soft)": {"taints": ("DeletionCandidateOfClusterAutoscaler",)},
    "joining, NotReady": {"ready": "False", "ready_message": "container runtime not ready"},
    "missed heartbeats": {"ready": "Unknown"},
    "cordoned only": {"unschedulable": True},
}


@pytest.mark.parametrize("state", sorted(GOING))
def test_every_going_state_is_avoided_by_the_next_attempt(state: str) -> None:
    going = dataclasses.replace(node("n1"), **GOING[state])
    assert signals.going(going)
    # The node that ran the gang (the rebalance case: advice, no restart) is going when a
    # later, unrelated loss of n2 ends the attempt: the next attempt must not land there.
    st = running_status()
    lost = [going, node("n2", exists=False)]
    st = merge(
        st, decide(observed(now=30, status=st, jobs={1: job(1)}, pods=gang(1), nodes=lost), CFG)
    )
    assert st["attempts"][0]["outcome"] == "Preempted", st["attempts"][0]
    d = decide(observed(now=60, status=st, nodes=lost), CFG)
    assert "n1" in required_not_in(d), (state, required_not_in(d))


@pytest.mark.parametrize("state", sorted(NOT_GOING))
def test_nodes_that_are_not_going_are_not_avoided(state: str) -> None:
    assert not signals.going(dataclasses.replace(node("n1"), **NOT_GOING[state]))


def test_a_healthy_node_behind_a_preemption_is_only_disfavoured() -> None:
    # n2's pod was evicted by a plain drain (no taint left on it); the gang is gone. n2 is
    # healthy and empty: a required NotIn would leave a 2-node gang with one other node
    # unschedulable while capacity exists.
    st = running_status()
    pods = gang(1)
    pods[1]["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    ]
    d = decide(observed(now=30, status=st, jobs={1: job(1)}, pods=pods), CFG)
    st = merge(st, d)
    assert st["attempts"][0]["outcome"] == "Preempted" and st["attempts"][0]["node"] == "n2"
    d = decide(observed(now=60, status=st, fleet=fleet("n1", "n2")), CFG)
    assert required_not_in(d) == []
    assert preferred_not_in(d) == ["n2"]


# --- a gang is created only when it can be placed -----------------------------------------


def test_an_attempt_is_created_only_once_every_pod_can_be_placed() -> None:
    d = decide(observed(fleet=fleet("n1", "n2", cordoned=("n2",))), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    st = merge({}, d)
    cap = next(c for c in st["conditions"] if c["type"] == "CapacityAvailable")
    assert (cap["status"], cap["reason"]) == ("False", "Unschedulable")
    assert "1 of 2 node(s) fit" in cap["message"]
    assert st["attempts"][0]["unschedulableSince"] == ts(0)
    assert d.requeue_after <= CFG.capacity_poll_seconds
    # Capacity returns: the job is created, nothing was charged.
    d = decide(observed(now=20, status=st, fleet=fleet("n1", "n2")), CFG)
    assert any(isinstance(a, CreateJob) for a in d.actions)
    st = merge(st, d)
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)


def test_a_gang_waiting_for_capacity_is_still_judged_by_the_apiserver() -> None:
    # A spec the apiserver refuses (a nodeSelector no node has, a bad value) must fail the
    # run at once (InvalidSpec from the dry run), not wait for capacity that never comes.
    d = decide(observed(fleet=fleet("n1", "n2", cordoned=("n2",))), CFG)
    checks = [a for a in d.actions if isinstance(a, ValidateJob)]
    assert len(checks) == 1 and checks[0].body["metadata"]["name"] == "llm-a1"
    assert not any(isinstance(a, CreateJob) for a in d.actions)


def test_nodes_going_away_do_not_count_as_capacity() -> None:
    nodes = fleet("n1", "n2")
    nodes["n2"] = dataclasses.replace(nodes["n2"], taints=(signals.TAINT_REBALANCE,))
    d = decide(observed(fleet=nodes, interrupted_nodes=["n2"]), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)


# --- the training operator giving up on an unplaced gang is capacity ----------------------


def init_gave_up(name: str, node_name: str) -> dict[str, Any]:
    """A Worker whose init-pytorch exited 1 (the master's DNS name never resolved), as the
    kubelet reports it: pod Failed, the trainer container never started."""
    p: dict[str, Any] = pod(name, node_name=node_name, phase="Failed", master=False)
    p["status"]["initContainerStatuses"] = [
        {"name": "init-pytorch", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    ]
    p["status"]["containerStatuses"] = [
        {"name": "pytorch", "state": {"waiting": {"reason": "PodInitializing"}}}
    ]
    return p


def test_init_container_giving_up_on_an_unplaced_master_is_an_incomplete_gang() -> None:
    master = pod("llm-a1-master-0", node_name=None, phase="Pending", unschedulable="0/3 nodes")
    worker = init_gave_up("llm-a1-worker-0", "n2")
    failed_job = job(1, "Failed")
    v = classify(
        pods=[master, worker], nodes={"n2": node("n2")}, expected=2, now=at(300), job=failed_job
    )
    assert (v.kind, v.reason) == (Kind.INCOMPLETE_GANG, "IncompleteGang")
    assert "init-pytorch" in v.message and "llm-a1-master-0" in v.message

    st = merge({}, decide(observed(), CFG))
    d = decide(observed(now=300, status=st, jobs={1: failed_job}, pods=[master, worker]), CFG)
    st = merge(st, d)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("IncompleteGang", "IncompleteGang")
    assert (st.get("failures", 0), st.get("preemptions", 0)) == (0, 0)
    assert st["phase"] != "Failed"
    assert "IncompleteGang" in [e.reason for e in d.events]


def worker_gave_up(name: str, node_name: str) -> dict[str, Any]:
    """A Worker with no init container whose trainer waited for its master and left with
    EXIT_NO_MASTER (spotrun_trainer.master_wait), as the kubelet reports it."""
    p: dict[str, Any] = pod(name, node_name=node_name, phase="Failed", master=False)
    p["status"]["containerStatuses"] = [
        {
            "name": "pytorch",
            "state": {
                "terminated": {
                    "exitCode": contract.EXIT_NO_MASTER,
                    "reason": "Error",
                    "message": "the master llm-a1-master-0:23456 did not answer in 200s",
                }
            },
        }
    ]
    return p


def test_a_worker_giving_up_on_an_unplaced_master_is_an_incomplete_gang() -> None:
    master = pod("llm-a1-master-0", node_name=None, phase="Pending", unschedulable="0/3 nodes")
    worker = worker_gave_up("llm-a1-worker-0", "n2")
    v = classify(
        pods=[master, worker],
        nodes={"n2": node("n2")},
        expected=2,
        now=at(300),
        job=job(1, "Failed"),
    )
    assert (v.kind, v.reason) == (Kind.INCOMPLETE_GANG, "IncompleteGang")
    assert f"exit {contract.EXIT_NO_MASTER}, no master" in v.message, v.message
    assert "llm-a1-master-0 had no node" in v.message, v.message


@pytest.mark.parametrize("gave_up", [init_gave_up, worker_gave_up])
def test_giving_up_on_a_placed_master_is_still_a_failure(gave_up: Any) -> None:
    """The master had a node and never answered in the whole wait: the application's,
    whichever word the worker gave (init-pytorch's exit, or its trainer's EXIT_NO_MASTER)."""
    master = pod("llm-a1-master-0", node_name="n1")
    worker = gave_up("llm-a1-worker-0", "n2")
    v = classify(
        pods=[master, worker],
        nodes={"n1": node("n1"), "n2": node("n2")},
        expected=2,
        now=at(300),
    )
    assert v.kind is Kind.FAILED
    assert "llm-a1-worker-0" in v.message, v.message


def test_a_trainer_crash_beside_an_unplaced_pod_is_still_a_failure() -> None:
    master = pod("llm-a1-master-0", node_name=None, phase="Pending", unschedulable="0/3 nodes")
    worker = pod("llm-a1-worker-0", node_name="n2", phase="Failed", master=False, exit_code=1)
    v = classify(pods=[master, worker], nodes={"n2": node("n2")}, expected=2, now=at(300))
    assert v.kind is Kind.FAILED


# --- a job deleted by someone else is never created again --------------------------------


def test_a_deleted_running_job_ends_the_attempt_and_is_not_created_again() -> None:
    st = running_status()
    d = decide(observed(now=30, status=st, jobs={}, pods=gang(1)), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    st = merge(st, d)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("Interrupted", signals.JOB_DELETED)
    assert (st.get("failures", 0), st.get("preemptions", 0)) == (0, 0)


def test_a_job_whose_pods_are_terminating_was_deleted() -> None:
    st = merge({}, decide(observed(), CFG))  # created, never seen
    d = decide(observed(now=3, status=st, jobs={}, pods=gang(1, deleting=True)), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    assert merge(st, d)["attempts"][0]["outcome"] == "Interrupted"


def test_pods_the_collector_deleted_after_the_job_name_the_jobs_deletion() -> None:
    st = running_status()
    gone = [
        pod(
            p["metadata"]["name"],
            node_name=p["spec"]["nodeName"],
            phase="Failed",
            exit_code=143,
            master=i == 0,
        )
        for i, p in enumerate(gang(1))
    ]
    d = decide(observed(now=30, status=st, jobs={}, pods=[], deleted_pods=gone), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    entry = merge(st, d)["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("Interrupted", signals.JOB_DELETED)


def test_pods_ahead_of_their_job_in_the_cache_create_nothing() -> None:
    st = merge({}, decide(observed(), CFG))
    d = decide(observed(now=1, status=st, jobs={}, pods=gang(1)), CFG)
    assert not d.actions and d.requeue_after <= 1.0
    assert "outcome" not in merge(st, d)["attempts"][0]


def test_pods_long_without_their_job_were_orphaned_by_its_deletion() -> None:
    st = merge({}, decide(observed(), CFG))
    orphans = gang(1)
    for p in orphans:
        p["metadata"]["creationTimestamp"] = ts(0)
    d = decide(observed(now=30, status=st, jobs={}, pods=orphans), CFG)
    assert not any(isinstance(a, CreateJob) for a in d.actions)
    entry = merge(st, d)["attempts"][0]
    assert (entry["outcome"], entry["reason"]) == ("Interrupted", signals.JOB_DELETED)


def test_a_job_never_seen_is_created() -> None:
    st = merge({}, decide(observed(), CFG))
    d = decide(observed(now=1, status=st, jobs={}, pods=[]), CFG)
    assert any(isinstance(a, CreateJob) for a in d.actions)


# --- every node lost before the next attempt is recorded ---------------------------------


def test_a_node_lost_after_the_verdict_is_recorded_with_its_own_signal() -> None:
    st = running_status()
    first = [node("n1", taints=(signals.TAINT_SPOT_ITN,)), node("n2")]
    st = merge(
        st, decide(observed(now=30, status=st, jobs={1: job(1)}, pods=gang(1), nodes=first), CFG)
    )
    assert st["attempts"][0]["interruptedNodes"] == ["n1"]
    # Two seconds later n2 is deleted (a silent loss; the CCM removed it) while the gang stops.
    later = [first[0], node("n2", exists=False)]
    st = merge(
        st,
        decide(observed(now=32, status=st, jobs={}, pods=gang(1, deleting=True), nodes=later), CFG),
    )
    entry = st["attempts"][0]
    assert entry["interruptedNodes"] == ["n1", "n2"]
    assert entry["interruptions"] == [
        {"node": "n1", "signal": signals.SPOT_INTERRUPTION},
        {"node": "n2", "signal": signals.NODE_LOST},
    ]
    assert st["preemptions"] == 1
