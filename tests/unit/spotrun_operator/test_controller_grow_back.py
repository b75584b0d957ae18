"""spec.elasticity.growBack: a shrunk attempt keeps placeholders for the nodes it lacks
and, once they run, makes way for a whole attempt (no budget, no backoff); waitBeforeShrink
0s shrinks at once."""

from __future__ import annotations

from typing import Any

from controller_fakes import CFG, LABEL_RUN, merge, observed, pod, ts
from test_controller_shrink_rules import fleet_node, job_with

from spotrun_api.status import Attempt
from spotrun_operator.decisions.elasticity import GROW_BACK_SETTLE_SECONDS, pod_needs
from spotrun_operator.decisions.grow_back import held_nodes, missing_nodes
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.common import LABEL_SPARE_OF
from spotrun_operator.facts.signals import NodeInfo
from spotrun_operator.model.plan import ApplySpares, CreateJob, Decision, DeleteJob, DeleteSpares

ELASTIC: dict[str, Any] = {"nodes": 2, "elasticity": {"minNodes": 1, "waitBeforeShrink": "0s"}}


def fleet(*names: str, cordoned: tuple[str, ...] = ()) -> dict[str, NodeInfo]:
    nodes = [fleet_node(n) for n in names] + [fleet_node(n, cordoned=True) for n in cordoned]
    return {n.name: n for n in nodes}


def spare(name: str, node: str | None, phase: str = "Running") -> dict[str, Any]:
    p: dict[str, Any] = pod(name, node_name=node, phase=phase)
    p["metadata"]["labels"] = {LABEL_RUN: "llm", LABEL_SPARE_OF: "llm"}
    return p


def step(
    st: dict[str, Any], now: float, over: dict[str, Any] | None = None, **kw: Any
) -> tuple[dict[str, Any], Decision]:
    d = decide(observed(now=now, spec_over=over or ELASTIC, status=st, **kw), CFG)
    return merge(st, d), d


def spares_applied(d: Decision) -> int | None:
    """Replicas of the spares' Deployment applied (None: not applied)."""
    apply = next((a for a in d.actions if isinstance(a, ApplySpares)), None)
    return None if apply is None else int(apply.body["spec"]["replicas"])


def shrunk_and_running(over: dict[str, Any] | None = None) -> dict[str, Any]:
    """Attempt 1 found one of two nodes (the other cordoned) and shrank at once; attempt
    2 runs on n1 alone."""
    over = over or ELASTIC
    world = {"fleet": fleet("n1", cordoned=("n2",))}
    st, d = step({}, 0, over, **world)
    assert st["attempts"][0]["outcome"] == "CapacityShrink"
    assert not any(isinstance(a, CreateJob) for a in d.actions)  # no half-placed gang
    st, d = step(st, 1, over, **world)
    assert st["attempts"][-1]["nodes"] == 1
    assert "spares" not in st  # no placeholder before the shrunk gang runs
    gang = [pod("llm-a2-master-0", attempt=2, node_name="n1")]
    st, _ = step(st, 2, over, jobs={2: job_with(2, 1)}, pods=gang, **world)
    assert st["attempts"][-1].get("startedAt")
    return st


def test_wait_before_shrink_0s_shrinks_an_unplaceable_attempt_at_once() -> None:
    st = shrunk_and_running()
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)
    assert st["phase"] == "Running"


def test_the_recovery_of_a_preemption_is_timed_to_the_shrunk_attempt_running() -> None:
    # Attempt 1 was preempted at 0 (nth on n2); attempt 2 shrank before it ran; attempt 3
    # runs on n1 at 9: the recovery metric says 9 s, labelled with the signal.
    st = {
        "phase": "Recovering",
        "attempt": 3,
        "preemptions": 1,
        "lastPreemption": {"attempt": 1, "signal": "spot-interruption", "time": ts(0)},
        "attempts": [
            {"attempt": 1, "nodes": 2, "outcome": "Preempted", "reason": "spot-interruption",
             "startedAt": ts(-100), "endedAt": ts(1), "stoppedAt": ts(3)},
            {"attempt": 2, "nodes": 2, "outcome": "CapacityShrink", "shrinkTo": 1,
             "endedAt": ts(4), "stoppedAt": ts(4)},
            {"attempt": 3, "nodes": 1, "createdAt": ts(5)},
        ],
    }  # fmt: skip
    gang = [pod("llm-a3-master-0", attempt=3, node_name="n1")]
    _, d = step(st, 9, jobs={3: job_with(3, 1)}, pods=gang, fleet=fleet("n1"))
    recovery = [m for m in d.metrics if m.name == "recovery"]
    assert [(m.value, m.labels["signal"]) for m in recovery] == [(9.0, "spot-interruption")]


def test_a_shrunk_attempt_keeps_a_placeholder_per_missing_node() -> None:
    st = shrunk_and_running()
    assert st["spares"]["replicas"] == 1  # asked for as soon as attempt 2 was shrunk
    gang = [pod("llm-a2-master-0", attempt=2, node_name="n1")]
    world: dict[str, Any] = {"jobs": {2: job_with(2, 1)}, "pods": gang, "fleet": fleet("n1")}
    st, d = step({k: v for k, v in st.items() if k != "spares"}, 3, **world)
    assert spares_applied(d) == 1
    assert st["spares"]["replicas"] == 1
    made = next(e for e in d.events if e.reason == "SparesUpdated")
    assert "1 of them for the nodes the shrunk attempt lacks" in made.message
    # With warm spares too, the placeholders come on top of them.
    over = {**ELASTIC, "capacity": {"warmSpares": 1}}
    _, d = step(st, 4, over, **world)
    assert spares_applied(d) == 2


def test_the_attempt_grows_back_once_placeholders_run_on_every_missing_node() -> None:
    st = shrunk_and_running()
    gang = [pod("llm-a2-master-0", attempt=2, node_name="n1")]
    world: dict[str, Any] = {"jobs": {2: job_with(2, 1)}, "pods": gang}
    # A placeholder waiting for its node, or pulling the image (Pending), holds nothing.
    for placeholder in (spare("s-0", None, "Pending"), spare("s-0", "n2", "Pending")):
        st, d = step(st, 5, spare_pods=[placeholder], fleet=fleet("n1", "n2"), **world)
        assert "outcome" not in st["attempts"][-1]
        assert not any(isinstance(a, DeleteJob) for a in d.actions)
    # Running on n2, a node the gang fits on: attempt 2 ends, gracefully, no budget spent.
    st, d = step(st, 6, spare_pods=[spare("s-0", "n2")], fleet=fleet("n1", "n2"), **world)
    entry = st["attempts"][-1]
    assert (entry["outcome"], entry["reason"], entry["nextAttemptAt"]) == (
        "CapacityGrow",
        "CapacityReturned",
        ts(6),
    )
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)
    assert DeleteJob("llm-a2") in d.actions
    grow = next(e for e in d.events if e.reason == "CapacityGrow")
    assert grow.type == "Normal"
    assert grow.message.startswith("attempt 3 runs with 2 nodes again: warm placeholders hold n2")
    assert st["display"]["last"] == "capacity-grow CapacityReturned a2"
    assert st["phase"] == "Recovering"
    assert spares_applied(d) == 1  # the placeholder holds n2 while the gang stops
    # The gang is gone: attempt 3 asks for spec.nodes, and the placeholders go.
    st, d = step(st, 7, spare_pods=[spare("s-0", "n2")], fleet=fleet("n1", "n2"))
    assert st["attempts"][-1]["nodes"] == 2
    job = next(a.body for a in d.actions if isinstance(a, CreateJob))
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert any(isinstance(a, DeleteSpares) for a in d.actions)
    # Through the apiserver's merge patch: status.spares asks for no placeholder any more.
    assert "replicas" not in (st.get("spares") or {})


def test_the_grown_back_attempt_waits_for_the_placeholders_it_takes_over() -> None:
    """waitBeforeShrink 0s: the attempt after a CapacityGrow is Unschedulable for a moment
    while the placeholders go; it does not shrink at once (it would grow back and shrink
    again, in a loop), only if its nodes are still not there after the settle time."""
    st = shrunk_and_running()
    gang = [pod("llm-a2-master-0", attempt=2, node_name="n1")]
    world: dict[str, Any] = {"jobs": {2: job_with(2, 1)}, "pods": gang}
    st, _ = step(st, 6, spare_pods=[spare("s-0", "n2")], fleet=fleet("n1", "n2"), **world)
    assert st["attempts"][-1]["outcome"] == "CapacityGrow"
    st, _ = step(st, 7, spare_pods=[spare("s-0", "n2")], fleet=fleet("n1", "n2"))
    assert st["attempts"][-1]["nodes"] == 2
    waiting = [
        pod("llm-a3-master-0", attempt=3, node_name="n1"),
        pod("llm-a3-worker-0", attempt=3, node_name=None, phase="Pending", master=False,
            unschedulable="0/2 nodes are available: 1 Insufficient nvidia.com/gpu"),
    ]  # fmt: skip
    world = {"jobs": {3: job_with(3, 2)}, "pods": waiting, "fleet": fleet("n1", "n2")}
    for now in (8, 8 + GROW_BACK_SETTLE_SECONDS - 1):
        st, d = step(st, now, **world)
        assert "outcome" not in st["attempts"][-1], st["attempts"][-1]
        assert not any(isinstance(a, DeleteJob) for a in d.actions)
    st, _ = step(st, 8 + GROW_BACK_SETTLE_SECONDS, **world)
    assert st["attempts"][-1]["outcome"] == "CapacityShrink"


def test_a_whole_elastic_attempt_touches_no_spares_deployment() -> None:
    st, d = step({}, 0)  # no view of the fleet: attempt 1 is created whole
    gang = [pod("llm-a1-master-0"), pod("llm-a1-worker-0", node_name="n2", master=False)]
    st, d2 = step(st, 1, jobs={1: job_with(1, 2)}, pods=gang, fleet=fleet("n1", "n2"))
    assert st["phase"] == "Running" and st["attempts"][0]["nodes"] == 2
    for dec in (d, d2):
        assert not [a for a in dec.actions if isinstance(a, ApplySpares | DeleteSpares)]


def test_grow_back_false_keeps_the_shrunk_attempt_and_asks_for_no_placeholder() -> None:
    over = {**ELASTIC, "elasticity": {**ELASTIC["elasticity"], "growBack": False}}
    st = shrunk_and_running(over)
    gang = [pod("llm-a2-master-0", attempt=2, node_name="n1")]
    world = {"jobs": {2: job_with(2, 1)}, "pods": gang, "fleet": fleet("n1", "n2")}
    st, d = step(st, 6, over, spare_pods=[spare("s-0", "n2")], **world)
    assert "outcome" not in st["attempts"][-1]
    assert spares_applied(d) is None


def test_only_running_placeholders_on_free_fitting_nodes_hold_a_node() -> None:
    spec = observed(spec_over=ELASTIC).spec
    assert spec is not None
    need = pod_needs(spec, "spot", ["going"])
    nodes = fleet("n1", "n2", "n3", "going", cordoned=("c1",))
    nodes["small"] = fleet_node("small", gpus=4)
    pods = [
        spare("a", "n1"),  # the attempt's own node
        spare("b", "n2"),
        spare("b2", "n2"),  # one node counts once
        spare("c", "c1"),  # cordoned
        spare("d", "going"),  # avoided after an interruption
        spare("e", "small"),  # too few GPUs
        spare("f", "gone"),  # no such node
        spare("g", "n3", "Pending"),
    ]
    deleting = spare("h", "n3")
    deleting["metadata"]["deletionTimestamp"] = ts(0)
    assert held_nodes([*pods, deleting], nodes, need, {"n1"}) == ["n2"]


def test_missing_nodes_counts_only_a_live_shrunk_attempt() -> None:
    spec = observed(spec_over=ELASTIC).spec
    plain = observed(spec_over={"nodes": 2}).spec
    st = shrunk_and_running()
    live = Attempt.model_validate(st["attempts"][-1])
    assert missing_nodes(spec, live) == 1
    assert missing_nodes(plain, live) == 0
    assert missing_nodes(spec, live.model_copy(update={"nodes": 2})) == 0
    # Not before its gang runs: a placeholder must not race the gang for its nodes.
    assert missing_nodes(spec, live.model_copy(update={"started_at": None})) == 0
    ended = Attempt.model_validate(st["attempts"][0])
    assert missing_nodes(spec, ended) == 0
    # Ended to grow back: held until the next attempt is created; any other end: not.
    assert missing_nodes(spec, live.model_copy(update={"outcome": "CapacityGrow"})) == 1
    assert missing_nodes(spec, live.model_copy(update={"outcome": "Preempted"})) == 0
    assert missing_nodes(spec, None) == 0
