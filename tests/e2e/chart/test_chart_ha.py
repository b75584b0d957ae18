"""The chart with two replicas: leader election, a PodDisruptionBudget, anti-affinity and
rolling updates (helm template only)."""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import find, helm_template, one, render

pytestmark = pytest.mark.usefixtures("helm")

HA = ("--set=replicas=2",)
SELECTOR = {
    "app.kubernetes.io/name": "spotrun",
    "app.kubernetes.io/instance": "spotrun",
    "app.kubernetes.io/component": "operator",
}


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_one_replica_is_recreated_and_has_no_budget_or_anti_affinity() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in pod_spec(docs)
    assert not find(docs, "PodDisruptionBudget")
    # Leader election is on by default, with one replica too.
    (container,) = pod_spec(docs)["containers"]
    assert "--leader-elect" in container["args"]


def test_two_replicas_elect_a_leader_roll_one_at_a_time_and_spread() -> None:
    docs = render(*HA)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (container,) = pod_spec(docs)["containers"]
    flags = [a for a in container["args"] if a.startswith("--leader")]
    assert flags == [
        "--leader-elect",
        "--leader-election-id=spotrun",
        "--leader-election-namespace=spotrun-system",
        "--leader-election-lease-seconds=15",
        "--leader-election-renew-deadline-seconds=10",
        "--leader-election-retry-period-seconds=2",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"][:2]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    (term,) = pod_spec(docs)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": SELECTOR},
    }
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == "spotrun-system"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    assert one(docs, "Role", "spotrun-leader-election")


def test_own_affinity_wins_and_other_affinity_is_kept() -> None:
    zone = {"app.kubernetes.io/name": "spotrun"}
    term = {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": zone}}
    own = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    docs = render(*HA, values={"affinity": {"podAntiAffinity": own}})
    assert pod_spec(docs)["affinity"] == {"podAntiAffinity": own}
    system = {"matchExpressions": [{"key": "role", "operator": "In", "values": ["system"]}]}
    node = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [system]}}
    affinity = pod_spec(render(*HA, values={"affinity": {"nodeAffinity": node}}))["affinity"]
    assert affinity["nodeAffinity"] == node and "podAntiAffinity" in affinity


def test_timings_pass_through_and_bad_combinations_are_refused() -> None:
    docs = render(
        *HA,
        "--set=leaderElection.leaseDurationSeconds=30",
        "--set=leaderElection.renewDeadlineSeconds=20",
        "--set=leaderElection.retryPeriodSeconds=4",
    )
    (container,) = pod_spec(docs)["containers"]
    assert "--leader-election-lease-seconds=30" in container["args"]
    assert "--leader-election-renew-deadline-seconds=20" in container["args"]
    assert "--leader-election-retry-period-seconds=4" in container["args"]
    for flags, message in [
        (("--set=replicas=2", "--set=leaderElection.enabled=false"),
         "replicas: more than 1 needs leaderElection.enabled"),
        (("--set=leaderElection.renewDeadlineSeconds=15",),
         "leaderElection.renewDeadlineSeconds: must be below leaseDurationSeconds"),
        (("--set=leaderElection.retryPeriodSeconds=9",),
         "leaderElection.retryPeriodSeconds: renewDeadlineSeconds must exceed 1.2 times it"),
    ]:  # fmt: skip
        result = helm_template(*flags)
        assert result.returncode != 0, flags
        assert message in result.stderr, result.stderr


def test_leader_election_off_with_one_replica() -> None:
    docs = render("--set=leaderElection.enabled=false")
    (container,) = pod_spec(docs)["containers"]
    assert not [a for a in container["args"] if a.startswith("--leader")]
    assert not find(docs, "Role")
