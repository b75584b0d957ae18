"""Warm spares (spec.capacity.warmSpares): the Deployment body, its lifecycle through the
run's decisions, and what the spares' nodes cost."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from controller_fakes import (
    CFG,
    REF,
    at,
    gang,
    job,
    merge,
    merge_patch,
    node,
    observed,
    pod,
    running_status,
    spec,
    ts,
)

from spotrun_api.prices import DEFAULT_ON_DEMAND_USD_PER_HOUR, DEFAULT_SPOT_FRACTION
from spotrun_api.spares import SparePod, SparesStatus
from spotrun_api.spec import parse_spec
from spotrun_api.status import parse_status
from spotrun_operator.decisions.reconcile import decide
from spotrun_operator.facts.common import LABEL_RUN, LABEL_SPARE_OF, is_spare
from spotrun_operator.model import builders
from spotrun_operator.model.plan import ApplySpares, Decision, DeleteSpares
from spotrun_operator.model.spares import build_spares_deployment
from spotrun_operator.money.cost import DEFAULT_PRICES
from spotrun_operator.money.spares import spares_cost, track
from spotrun_operator.watching.observe import observe

P4D_SPOT = DEFAULT_ON_DEMAND_USD_PER_HOUR["p4d.24xlarge"] * DEFAULT_SPOT_FRACTION


def deployment(**over: Any) -> dict[str, Any]:
    return build_spares_deployment(REF, parse_spec(spec(**over)))


def pod_spec(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body["spec"]["template"]["spec"])


def capacity(warm: int, **more: Any) -> dict[str, Any]:
    return {"type": "spot", "instanceTypes": ["p4d.24xlarge"], "warmSpares": warm, **more}


# --- the Deployment ----------------------------------------------------------------------


def test_spares_run_at_the_spare_class_one_per_node_and_leave_on_sigterm() -> None:
    body = deployment(capacity=capacity(3))
    assert body["metadata"]["name"] == "llm-spares"
    assert body["metadata"]["ownerReferences"] == [builders.owner_reference(REF)]
    assert body["spec"]["replicas"] == 3
    tpl = body["spec"]["template"]
    assert tpl["metadata"]["labels"][LABEL_SPARE_OF] == "llm"
    assert body["spec"]["selector"] == {"matchLabels": {LABEL_SPARE_OF: "llm"}}
    ps = pod_spec(body)
    assert ps["priorityClassName"] == "spotrun-spare"
    assert ps["terminationGracePeriodSeconds"] == 0
    (anti,) = ps["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti == {
        "labelSelector": {"matchLabels": {LABEL_SPARE_OF: "llm"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    (c,) = ps["containers"]
    assert c["image"] == "spotrun/trainer:dev"
    assert c["command"][0] == "python" and "SIGTERM" in c["command"][-1]


def test_spares_ask_for_what_a_worker_asks_for_where_a_worker_may_run() -> None:
    over = {
        "capacity": capacity(1, instanceTypes=["p4d.24xlarge", "p5.48xlarge"]),
        "resources": {"requests": {"cpu": "90"}},
        "podTemplate": {
            "spec": {
                "nodeSelector": {"team": "ml"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "imagePullSecrets": [{"name": "regcred"}],
            }
        },
    }
    parsed = parse_spec(spec(**over))
    worker = builders.build_pytorchjob(
        REF, parsed, attempt=4, capacity_type="spot", interval_seconds=900
    )["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    ps = pod_spec(build_spares_deployment(REF, parsed))
    assert ps["affinity"]["nodeAffinity"] == worker["affinity"]["nodeAffinity"]
    for key in ("nodeSelector", "tolerations", "imagePullSecrets"):
        assert ps[key] == worker[key], key
    assert ps["containers"][0]["resources"] == worker["containers"][0]["resources"]
    assert ps["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # Nothing of the trainer's pod beyond placement: no volumes, no contract env.
    assert "volumes" not in ps and "env" not in ps["containers"][0]


def test_spare_pods_are_never_taken_for_attempt_pods() -> None:
    spare = spare_pod("llm-spares-x1", "n9")
    attempt_pod = pod("llm-a1-master-0")

    class Reads:
        def list_jobs(self, *_: Any) -> dict[int, Any]:
            return {1: job(1)}

        def list_pods(self, *_: Any) -> list[dict[str, Any]]:
            return [attempt_pod, spare]

        def get_node(self, name: str) -> None:
            return None

        def get_workload(self, *_: Any) -> None:
            return None

        def pod_refusal(self, *_: Any) -> None:
            return None

        def missing(self, *_: Any) -> list[str]:
            return []

    run = {"metadata": {"name": "llm", "namespace": "ml", "uid": "u"}, "spec": spec()}
    gone = spare_pod("llm-spares-x0", "n8")
    obs = observe(Reads(), run, remembered_nodes={}, seen_pods=[gone], interrupted_nodes=[])
    assert [p["metadata"]["name"] for p in obs.pods] == ["llm-a1-master-0"]
    assert obs.deleted_pods == []
    assert [p["metadata"]["name"] for p in obs.spare_pods] == ["llm-spares-x1"]
    assert [p["metadata"]["name"] for p in obs.deleted_spare_pods] == ["llm-spares-x0"]
    assert is_spare(spare) and not is_spare(attempt_pod)


# --- the lifecycle -----------------------------------------------------------------------


def spare_actions(d: Decision) -> list[Any]:
    return [a for a in d.actions if isinstance(a, ApplySpares | DeleteSpares)]


def test_an_active_run_keeps_its_spares_and_a_change_updates_them() -> None:
    st = running_status()
    d = decide_running(10, st, {"capacity": capacity(2)})
    (apply,) = spare_actions(d)
    assert isinstance(apply, ApplySpares) and apply.body["spec"]["replicas"] == 2
    assert [e.reason for e in d.events if e.reason.startswith("Spares")] == ["SparesUpdated"]
    st = merge(st, d)
    assert st["spares"] == {"replicas": 2, "image": "spotrun/trainer:dev"}
    # The same again: applied again (level-based), no event.
    d = decide_running(20, st, {"capacity": capacity(2)})
    assert isinstance(spare_actions(d)[0], ApplySpares)
    assert not [e for e in d.events if e.reason.startswith("Spares")]
    # A new image and count: the body follows, one event.
    d = decide_running(30, st, {"capacity": capacity(3), "image": "spotrun/trainer:v2"})
    (apply,) = spare_actions(d)
    assert isinstance(apply, ApplySpares)
    assert apply.body["spec"]["replicas"] == 3
    assert apply.body["spec"]["template"]["spec"]["containers"][0]["image"] == "spotrun/trainer:v2"
    assert [e.reason for e in d.events if e.reason.startswith("Spares")] == ["SparesUpdated"]


def test_spares_pull_the_operators_images_for_the_workers_init_container() -> None:
    """Each Worker pod first runs the training operator's init container: a spare that
    lacks its image leaves the next attempt's worker pulling it on the spare's node."""
    assert "initContainers" not in pod_spec(deployment(capacity=capacity(1)))
    cfg = replace(CFG, spare_pull_images=" alpine:3.10, ,reg.example/init:1")
    d = decide(
        observed(now=10, status=running_status(), jobs={1: job(1)}, pods=gang_pods(),
                 spec_over={"capacity": capacity(1)}),
        cfg,
    )  # fmt: skip
    (apply,) = spare_actions(d)
    assert isinstance(apply, ApplySpares)
    inits = apply.body["spec"]["template"]["spec"]["initContainers"]
    assert [(c["name"], c["image"]) for c in inits] == [
        ("pull-0", "alpine:3.10"), ("pull-1", "reg.example/init:1")]  # fmt: skip
    for c in inits:
        assert c["command"] == ["sh", "-c", "exit 0"]
        # What a restricted namespace asks of every container, and a request too small to
        # change the spare's (the larger of init and regular containers counts).
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["resources"]["limits"] == {"cpu": "100m", "memory": "20Mi"}
    inits[0]["securityContext"]["capabilities"]["drop"].append("X")  # copies, not shared
    assert inits[1]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def decide_running(now: float, st: dict[str, Any], over: dict[str, Any]) -> Decision:
    """A decision on attempt 1 running on its gang, with ``over`` in the spec."""
    return decide(
        observed(now=now, status=st, jobs={1: job(1)}, pods=gang_pods(), spec_over=over), CFG
    )


def gang_pods() -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = gang(1)
    return pods


@pytest.mark.parametrize(
    "over",
    [
        {"suspend": True},  # suspended by the user
        {"capacity": capacity(0)},  # spares turned off
    ],
)
def test_spares_go_when_the_run_is_suspended_or_asks_for_none(over: dict[str, Any]) -> None:
    st = running_status()
    st["spares"] = {"replicas": 2, "image": "spotrun/trainer:dev"}
    d = decide(
        observed(
            now=10,
            status=st,
            jobs={1: job(1)},
            pods=gang_pods(),
            spec_over={"capacity": capacity(2), **over},
        ),
        CFG,
    )
    assert spare_actions(d) == [DeleteSpares("llm-spares")]
    assert [e.reason for e in d.events if e.reason.startswith("Spares")] == ["SparesRemoved"]
    assert "spares" not in merge(st, d)


def test_a_finished_run_deletes_its_spares() -> None:
    st = running_status()
    st["spares"] = {"replicas": 2, "image": "spotrun/trainer:dev"}
    done = gang_pods()
    for p in done:
        p["status"]["phase"] = "Succeeded"
        p["status"]["containerStatuses"][0]["state"] = {
            "terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": ts(5)}
        }
    d = decide(
        observed(
            now=10,
            status=st,
            jobs={1: job(1, "Succeeded")},
            pods=done,
            spec_over={"capacity": capacity(2)},
        ),
        CFG,
    )
    assert merge(st, d)["phase"] == "Succeeded"
    assert spare_actions(d) == [DeleteSpares("llm-spares")]
    # Finished, recorded: nothing more is asked of the apiserver for a run without spares.
    st = merge(st, d)
    d = decide(observed(now=20, status=st, jobs={1: job(1, "Succeeded")}, pods=done), CFG)
    assert spare_actions(d) == []


def test_a_run_without_spares_touches_no_deployment() -> None:
    st = running_status()
    d = decide(observed(now=10, status=st, jobs={1: job(1)}, pods=gang_pods()), CFG)
    assert spare_actions(d) == [] and "spares" not in merge(st, d)


# --- cost ----------------------------------------------------------------------------------


def spare_pod(name: str, node_name: str | None, bound: float = 0.0, **meta: Any) -> dict[str, Any]:
    p: dict[str, Any] = pod(name, node_name=node_name)
    p["metadata"]["labels"] = {LABEL_RUN: "llm", LABEL_SPARE_OF: "llm"}
    p["metadata"].update(meta)
    p["metadata"]["creationTimestamp"] = ts(bound - 30)
    if node_name:
        p["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(bound)}
        ]
    return p


def test_a_bound_spare_bills_its_node_from_binding_to_its_end() -> None:
    nodes = {"n9": node("n9")}
    unbound = spare_pod("s-0", None)
    bound = spare_pod("s-1", "n9", bound=100.0)
    st = track(None, [unbound, bound], [], nodes, at(100 + 3600), DEFAULT_PRICES, "spot")
    assert [p.name for p in st.pods or ()] == ["s-1"]
    running = spares_cost(st, at(100 + 3600), DEFAULT_PRICES)
    assert running.spare_node_seconds == pytest.approx(3600)
    assert running.spares_usd == pytest.approx(P4D_SPOT)
    # Preempted after two hours (deleted): the two hours are frozen, nothing bills after.
    gone = spare_pod("s-1", "n9", bound=100.0, deletionTimestamp=ts(100 + 7200))
    st = track(st, [unbound], [gone], nodes, at(100 + 9000), DEFAULT_PRICES, "spot")
    assert st.pods == []
    assert st.ended_node_seconds == pytest.approx(7200)
    later = spares_cost(st, at(100 + 99999), DEFAULT_PRICES)
    assert later.spares_usd == pytest.approx(2 * P4D_SPOT)
    # Separate from the attempts' spot figure, inside the total.
    assert later.spot_usd == 0.0 and later.total_usd == pytest.approx(2 * P4D_SPOT)


def test_an_on_demand_spare_bills_the_on_demand_price() -> None:
    od = SparePod(
        name="s",
        uid="u",
        node="n",
        instance_type="p4d.24xlarge",
        capacity_type="on-demand",
        since=ts(0),
    )
    cost = spares_cost(SparesStatus(pods=[od]), at(1800), DEFAULT_PRICES)
    assert cost.spares_usd == pytest.approx(DEFAULT_ON_DEMAND_USD_PER_HOUR["p4d.24xlarge"] / 2)


def test_spares_are_in_status_cost_and_in_the_budget() -> None:
    st = running_status()
    spares = SparesStatus(
        replicas=1,
        pods=[
            SparePod(
                name="s",
                uid="u",
                node="n9",
                instance_type="p4d.24xlarge",
                zone="us-east-1a",
                capacity_type="spot",
                since=ts(0),
            )
        ],
        ended_node_seconds=3600.0,
        ended_usd=100.0,
    )
    st["spares"] = spares.model_dump(mode="json", by_alias=True, exclude_none=True)
    over = {"capacity": capacity(1), "budget": {"maxUSD": 120.0}}
    d = decide(
        observed(now=3600, status=st, jobs={1: job(1)}, pods=gang_pods(), spec_over=over), CFG
    )
    new = merge(st, d)
    cost = new["cost"]
    assert cost["sparesUSD"] == pytest.approx(100.0 + P4D_SPOT, abs=0.01)
    assert cost["spareNodeSeconds"] == 7200
    assert cost["totalUSD"] == pytest.approx(cost["spotUSD"] + cost["sparesUSD"], abs=0.02)
    # The gang's spend alone is under the budget; with the spares' it is over: stopped.
    assert cost["spotUSD"] < 120.0 < cost["totalUSD"]
    assert parse_status(new).attempts[-1].outcome == "BudgetExceeded"  # type: ignore[index]
    assert d.gauges is not None and d.gauges.spares_usd == pytest.approx(
        cost["sparesUSD"], abs=0.01
    )


def test_an_ended_spare_is_priced_once_across_reconciles() -> None:
    # Through decide and the apiserver's merge of the status patch: a spare bound at 0 and
    # preempted at 60 costs 60 node-seconds, however many reconciles come after.
    st: dict[str, Any] = running_status()
    over = {"capacity": capacity(1)}
    bound = spare_pod("s-1", "n9", bound=0.0)
    gone = spare_pod("s-1", "n9", bound=0.0, deletionTimestamp=ts(60))
    nodes = [node("n1"), node("n2", zone="us-east-1b"), node("n9")]
    for now, pods, deleted in [(30, [bound], []), (61, [], [gone])] + [
        (61 + 30 * i, [], []) for i in range(1, 6)
    ]:
        obs = observed(now=now, status=st, jobs={1: job(1)}, pods=gang_pods(), spec_over=over,
                       nodes=nodes, spare_pods=pods, deleted_spare_pods=deleted)  # fmt: skip
        st = merge_patch(st, decide(obs, CFG).status or {})
    assert st["spares"]["endedNodeSeconds"] == pytest.approx(60)
    assert not st["spares"].get("pods")  # none listed (the patch nulls the emptied list)
