"""spec.elasticity: an attempt that cannot be placed for waitBeforeShrink restarts with the
nodes that fit (never fewer than minNodes, no budget, no backoff); later attempts ask for
spec.nodes again."""

from __future__ import annotations

from typing import Any

import pytest
from controller_fakes import CFG, REF, SPOT_LABELS, cond, merge, observed, pod, ts

from spotrun_dev import traces
from spotrun_operator.decisions.elasticity import (
    PodNeeds,
    fits,
    fitting_nodes,
    pod_needs,
    tolerates,
)
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.signals import NodeInfo, node_info
from spotrun_operator.model.builders import job_nodes
from spotrun_operator.model.plan import CreateJob, Decision, DeleteJob
from spotrun_operator.watching.observe import observe

GPU_TAINT = ("nvidia.com/gpu", "present", "NoSchedule")
ELASTIC: dict[str, Any] = {"nodes": 4, "elasticity": {"minNodes": 2, "waitBeforeShrink": "60s"}}
UNSCHEDULABLE = "0/8 nodes are available: 6 node(s) were unschedulable."


def fleet_node(
    name: str,
    *,
    cordoned: bool = False,
    gpus: int = 8,
    taints: tuple[tuple[str, str, str], ...] = (GPU_TAINT,),
    labels: dict[str, str] | None = None,
) -> NodeInfo:
    return NodeInfo(
        name,
        labels={**SPOT_LABELS, **(labels or {})},
        taints=tuple(t[0] for t in taints),
        unschedulable=cordoned,
        hard_taints=taints,
        gpus=gpus,
    )


def fleet(free: int, cordoned: int = 0) -> dict[str, NodeInfo]:
    """``free`` schedulable spot nodes n1.., then ``cordoned`` cordoned ones."""
    nodes = [fleet_node(f"n{i + 1}") for i in range(free)]
    nodes += [fleet_node(f"c{i + 1}", cordoned=True) for i in range(cordoned)]
    return {n.name: n for n in nodes}


def waiting_gang(attempt: int = 1, placed: tuple[str, ...] = ("n1", "n2"), size: int = 4) -> Any:
    """The attempt's pods: those on ``placed`` Running, the rest Pending, unschedulable."""
    out = []
    for i in range(size):
        name = f"{REF.name}-a{attempt}-{'master' if i == 0 else 'worker'}-{max(0, i - 1)}"
        where = placed[i] if i < len(placed) else None
        kw: dict[str, Any] = (
            {"phase": "Running"} if where else {"phase": "Pending", "unschedulable": UNSCHEDULABLE}
        )
        out.append(pod(name, attempt=attempt, node_name=where, master=i == 0, **kw))
    return out


def job_with(attempt: int, nodes: int) -> dict[str, Any]:
    specs: dict[str, Any] = {"Master": {"replicas": 1}}
    if nodes > 1:
        specs["Worker"] = {"replicas": nodes - 1}
    return {
        "metadata": {"name": f"{REF.name}-a{attempt}", "creationTimestamp": ts(0)},
        "spec": {"pytorchReplicaSpecs": specs},
        "status": {"conditions": []},
    }


def created(d: Decision) -> dict[str, Any]:
    return next(a.body for a in d.actions if isinstance(a, CreateJob))


def replicas(body: dict[str, Any]) -> dict[str, int]:
    return {k: v["replicas"] for k, v in body["spec"]["pytorchReplicaSpecs"].items()}


def step(
    st: dict[str, Any], now: float, over: dict[str, Any] | None = None, **kw: Any
) -> tuple[dict[str, Any], Decision]:
    d = decide(observed(now=now, spec_over=over or ELASTIC, status=st, **kw), CFG)
    return merge(st, d), d


def waiting(
    now: float, free: int = 2, cordoned: int = 6, **kw: Any
) -> tuple[dict[str, Any], Decision]:
    """Attempt 1 of 4 nodes created at 0, seen unschedulable at 1, looked at again at ``now``."""
    st = merge({}, decide(observed(spec_over=ELASTIC), CFG))
    world = {"jobs": {1: job_with(1, 4)}, "pods": waiting_gang(), "fleet": fleet(free, cordoned)}
    st, _ = step(st, 1, **world)
    return step(st, now, **{**world, **kw})


# --- which nodes fit -------------------------------------------------------------------


SPOT_NEED = PodNeeds(
    "spot", ("p4d.24xlarge",), 8, ({"key": "nvidia.com/gpu", "operator": "Exists"},)
)


@pytest.mark.parametrize(
    ("node", "fit"),
    [
        (fleet_node("ok"), True),
        (fleet_node("cordoned", cordoned=True), False),
        (fleet_node("small", gpus=4), False),
        (
            fleet_node(
                "od",
                labels={
                    "eks.amazonaws.com/capacityType": "ON_DEMAND",
                    "karpenter.sh/capacity-type": "on-demand",
                },
            ),
            False,
        ),
        (fleet_node("karpenter", labels={"eks.amazonaws.com/capacityType": ""}), True),
        (fleet_node("g5", labels={"node.kubernetes.io/instance-type": "g5.48xlarge"}), False),
        (fleet_node("itn", taints=(GPU_TAINT, (traces.NTH_SPOT_ITN, "", "NoSchedule"))), False),
        (NodeInfo("gone", exists=False, labels=SPOT_LABELS, gpus=8), False),
        (NodeInfo("down", ready="Unknown", labels=SPOT_LABELS, gpus=8), False),
        (NodeInfo("deleting", deleting=True, labels=SPOT_LABELS, gpus=8), False),
    ],
)
def test_a_node_fits_when_a_pod_of_the_attempt_could_land_there(node: NodeInfo, fit: bool) -> None:
    assert fits(node, SPOT_NEED) is fit


def test_avoided_nodes_node_selector_and_tolerations_of_the_pod_template() -> None:
    tainted = fleet_node("t", taints=(GPU_TAINT, ("dedicated", "ml", "NoExecute")))
    labelled = fleet_node("l", labels={"pool": "a"})
    base = observed(spec_over=ELASTIC).spec
    assert base is not None
    need = pod_needs(base, "spot", avoid=["l"])
    assert not fits(tainted, need) and not fits(labelled, need)
    tpl = {
        "spec": {
            "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoExecute"}],
            "nodeSelector": {"pool": "a"},
        }
    }
    spec = observed(spec_over={**ELASTIC, "podTemplate": tpl}).spec
    assert spec is not None
    need = pod_needs(spec, "spot", avoid=[])
    assert fits(labelled, need) and not fits(tainted, need)  # no pool=a label
    assert fits(fleet_node("both", taints=tainted.hard_taints, labels={"pool": "a"}), need)


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"operator": "Exists"}, True),
        ({"key": "k", "operator": "Exists"}, True),
        ({"key": "k", "value": "v"}, True),
        ({"key": "k", "operator": "Equal", "value": "w"}, False),
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_toleration_matching(toleration: dict[str, str], tolerated: bool) -> None:
    assert tolerates([toleration], ("k", "v", "NoSchedule")) is tolerated


def test_fitting_counts_free_nodes_and_the_attempts_own_then_the_schedulers_answer() -> None:
    pods = waiting_gang(placed=("n1", "c1"))  # c1 was cordoned after its pod was placed
    count, why = fitting_nodes(fleet(2, 6), pods, SPOT_NEED, 4)
    assert count == 3 and why.startswith("3 node(s) fit (spot p4d.24xlarge with 8 GPUs")
    # Every node looks free, yet pods wait: other pods hold the GPUs; trust the scheduler.
    count, why = fitting_nodes(fleet(8), waiting_gang(placed=("n1", "n2", "n3")), SPOT_NEED, 4)
    assert count == 3 and "the scheduler placed 3 of 4 pods" in why


def test_node_info_reads_allocatable_gpus_and_the_taints_that_keep_pods_off() -> None:
    info = node_info(
        {
            "metadata": {"name": "n"},
            "spec": {
                "taints": [
                    {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                    {"key": "soft", "effect": "PreferNoSchedule"},
                ]
            },
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        }
    )
    assert info.gpus == 8 and info.hard_taints == (GPU_TAINT,)
    assert info.taints == ("nvidia.com/gpu", "soft")
    assert node_info({"metadata": {"name": "n"}, "status": {"allocatable": {}}}).gpus == 0


# --- the decision ------------------------------------------------------------------------


def test_waiting_less_than_wait_before_shrink_changes_nothing() -> None:
    st, d = waiting(40)
    assert "outcome" not in st["attempts"][0]
    assert not any(isinstance(a, DeleteJob) for a in d.actions)
    assert d.requeue_after <= 21  # looks again when waitBeforeShrink has passed
    assert cond(st, "CapacityAvailable")["status"] == "False"


def test_after_wait_before_shrink_the_next_attempt_runs_with_the_nodes_that_fit() -> None:
    st, d = waiting(61)
    entry = st["attempts"][0]
    assert (entry["outcome"], entry["reason"], entry["shrinkTo"]) == (
        "CapacityShrink",
        "Unschedulable",
        2,
    )
    assert entry["nextAttemptAt"] == ts(61)  # no backoff
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)  # no budget spent
    assert DeleteJob("llm-a1") in d.actions
    assert st["phase"] == "Recovering"
    shrink = next(e for e in d.events if e.reason == "CapacityShrink")
    assert shrink.type == "Warning"
    assert shrink.message.startswith("attempt 2 runs with 2 of 4 nodes: 2 node(s) fit (spot")
    assert "unschedulable for 60s" in shrink.message and "no budget spent" in shrink.message
    assert st["message"] == shrink.message
    assert st["display"]["last"] == "capacity-shrink Unschedulable a1"

    # The gang is gone: attempt 2 asks for 2 nodes (1 Master + 1 Worker).
    st, d = step(st, 62, fleet=fleet(2, 6))
    assert st["attempt"] == 2
    new = st["attempts"][-1]
    assert (new["nodes"], new["capacityType"]) == (2, "spot")
    assert replicas(created(d)) == {"Master": 1, "Worker": 1}
    made = next(e for e in d.events if e.reason == "AttemptCreated")
    assert "2 of 4 nodes (shrunk) x 8 GPUs" in made.message
    assert st["message"] == "attempt 2 created on spot with 2 of 4 nodes"

    # Its two pods run: the gang is complete at 2.
    gang2 = waiting_gang(attempt=2, placed=("n1", "n2"), size=2)
    st, d = step(st, 70, jobs={2: job_with(2, 2)}, pods=gang2, fleet=fleet(2, 6))
    assert st["phase"] == "Running" and st["attempts"][-1]["startedAt"] == ts(70)
    assert st["message"] == "attempt 2 running with 2 of 4 nodes"
    assert (
        cond(st, "CapacityAvailable")["message"]
        == "every pod of attempt 2 is placed with 2 of 4 nodes"
    )
    running = next(e for e in d.events if e.reason == "AttemptRunning")
    assert running.message == "attempt 2 running with 2 of 4 nodes on n1, n2"


def test_never_fewer_than_min_nodes_keeps_waiting() -> None:
    st, d = waiting(61, free=1, cordoned=7, pods=waiting_gang(placed=("n1",)))
    assert "outcome" not in st["attempts"][0]
    assert not any(isinstance(a, DeleteJob) for a in d.actions)
    assert "fewer than spec.elasticity.minNodes 2" in st["message"]
    assert not any(e.reason == "CapacityShrink" for e in d.events)
    # Nodes come back: the next look shrinks to what fits now (n1, n2, n3).
    world = {"jobs": {1: job_with(1, 4)}, "pods": waiting_gang(placed=("n1",))}
    st, d = step(st, 90, fleet=fleet(3, 5), **world)
    assert st["attempts"][0]["shrinkTo"] == 3


def test_a_full_gang_that_fits_nowhere_smaller_keeps_waiting() -> None:
    """Nothing placed and every node looks free: no count to shrink to."""
    st = merge({}, decide(observed(spec_over=ELASTIC), CFG))
    world = {"jobs": {1: job_with(1, 4)}, "pods": waiting_gang(placed=()), "fleet": fleet(8)}
    st, _ = step(st, 1, **world)
    st, d = step(st, 100, **world)
    assert not any(isinstance(a, DeleteJob) for a in d.actions)
    assert "outcome" not in st["attempts"][0] and "the scheduler placed 0 of 4" in st["message"]


def test_the_next_restart_asks_for_every_node_again() -> None:
    st, _ = waiting(61)
    st, _ = step(st, 62, fleet=fleet(8))
    st, _ = step(st, 63, fleet=fleet(8))
    gang2 = waiting_gang(attempt=2, placed=("n1", "n2"), size=2)
    world: dict[str, Any] = {"jobs": {2: job_with(2, 2)}, "pods": gang2, "fleet": fleet(8)}
    st, _ = step(st, 70, **world)
    # A spot interruption of attempt 2: one preemption, the backoff of a first loss.
    itn = [
        NodeInfo("n1", labels=SPOT_LABELS, gpus=8),
        NodeInfo("n2", labels=SPOT_LABELS, taints=(traces.NTH_SPOT_ITN,), gpus=8),
    ]
    st, _ = step(st, 100, nodes=itn, **world)
    entry = st["attempts"][-1]
    assert (entry["outcome"], st["preemptions"], st.get("failures", 0)) == ("Preempted", 1, 0)
    assert entry["nextAttemptAt"] == ts(110)  # base backoff: the shrink was not a loss
    st, _ = step(st, 101, fleet=fleet(8))
    st, d = step(st, 111, fleet=fleet(8))
    assert st["attempt"] == 3 and st["attempts"][-1]["nodes"] == 4
    assert replicas(created(d)) == {"Master": 1, "Worker": 3}
    made = next(e for e in d.events if e.reason == "AttemptCreated")
    assert "4 node(s) x 8 GPUs" in made.message


def test_without_elasticity_an_unschedulable_attempt_waits_as_before() -> None:
    over = {"nodes": 4}
    st = merge({}, decide(observed(spec_over=over), CFG))
    world = {"jobs": {1: job_with(1, 4)}, "pods": waiting_gang(), "fleet": fleet(2, 6)}
    st, _ = step(st, 1, over, **world)
    st, d = step(st, 3600, over, **world)
    assert "outcome" not in st["attempts"][0] and d.actions == []


def test_on_demand_fallback_due_first_wins_and_shrink_keeps_the_capacity_type() -> None:
    fallback = {**ELASTIC, "capacity": {"type": "spot", "onDemandFallbackAfter": "30s"}}
    st = merge({}, decide(observed(spec_over=fallback), CFG))
    world = {"jobs": {1: job_with(1, 4)}, "pods": waiting_gang(), "fleet": fleet(2, 6)}
    st, _ = step(st, 1, fallback, **world)
    st, _ = step(st, 31, fallback, **world)
    assert st["attempts"][0]["outcome"] == "CapacityFallback"
    # Attempt 2 (on-demand, full size) waits too; after 60s it shrinks and stays on-demand.
    st, _ = step(st, 32, fallback)
    st, _ = step(st, 33, fallback)
    od = {
        f"od{i}": fleet_node(
            f"od{i}",
            labels={
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "karpenter.sh/capacity-type": "on-demand",
            },
        )
        for i in range(3)
    }
    pods = waiting_gang(2, ("od0", "od1"))
    world = {"jobs": {2: job_with(2, 4)}, "pods": pods, "fleet": od, "nodes": list(od.values())}
    st, _ = step(st, 40, fallback, **world)
    st, _ = step(st, 101, fallback, **world)
    assert (st["attempts"][1]["outcome"], st["attempts"][1]["shrinkTo"]) == ("CapacityShrink", 3)
    st, _ = step(st, 102, fallback)
    st, _ = step(st, 103, fallback)
    assert (st["attempts"][2]["capacityType"], st["attempts"][2]["nodes"]) == ("on-demand", 3)


def test_a_shrunk_job_adopted_after_status_was_lost_keeps_its_size() -> None:
    gang2 = waiting_gang(attempt=2, placed=("n1", "n2"), size=2)
    d = decide(observed(now=5, spec_over=ELASTIC, jobs={2: job_with(2, 2)}, pods=gang2), CFG)
    st = merge({}, d)
    assert st["attempts"][0]["nodes"] == 2 and st["phase"] == "Running"
    assert job_nodes({"spec": {"pytorchReplicaSpecs": {"Master": {}}}}) == 1
    assert job_nodes({"metadata": {}}) is None


class _Kube:
    def list_jobs(self, namespace: str, run: str, owner_uid: str) -> dict[int, Any]:
        return {}

    def list_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return []

    def get_node(self, name: str) -> dict[str, Any] | None:
        return None

    def missing(self, namespace: str, refs: Any) -> list[str]:
        return []

    def get_workload(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        return None

    def pod_refusal(self, namespace: str, job: Any) -> Any:
        return None


@pytest.mark.parametrize("elastic", [True, False])
def test_observe_hands_the_watched_fleet_to_every_run(elastic: bool) -> None:
    """Every run's next attempt is created only once its gang can be placed (placement
    gate, elasticity.unplaceable), so every run sees the existing nodes, not only elastic
    ones; deleted nodes are not capacity."""
    spec: dict[str, Any] = {"image": "i", "nodes": 2, "checkpoint": {"volume": {"claimName": "c"}}}
    if elastic:
        spec["elasticity"] = {"minNodes": 1}
    run = {"metadata": {"name": "r", "namespace": "ml", "uid": "u"}, "spec": spec}
    known = {"n1": fleet_node("n1"), "gone": NodeInfo("gone", exists=False)}
    obs = observe(_Kube(), run, remembered_nodes=known, seen_pods=[], interrupted_nodes=[])
    assert obs.fleet is not None and list(obs.fleet) == ["n1"]
