"""ensure_fleet: a recreated node counts only once kwok has run a pod on it."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from spotrun_dev import fleet, fleet_state
from spotrun_dev.waiting import ClusterError

SPEC = fleet.FleetSpec(spot_nodes=2, on_demand_nodes=0)


def _node(body: dict[str, Any], cordoned: bool = False) -> SimpleNamespace:
    meta = body["metadata"]
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=meta["name"],
            labels=dict(meta["labels"]),
            annotations=dict(meta["annotations"]),
            deletion_timestamp=None,
        ),
        spec=SimpleNamespace(
            unschedulable=cordoned or None,
            taints=[SimpleNamespace(key=t["key"]) for t in body["spec"]["taints"]],
        ),
        status=SimpleNamespace(conditions=[SimpleNamespace(type="Ready", status="True")]),
    )


class _Cluster:
    """The apiserver and kwok: kwok plays a pod bound to a node (Pending -> Running) unless
    the node's registration is one of ``deaf`` (node name -> how many registrations kwok
    ignores), as kwok did with a node deleted and created again at once."""

    def __init__(self, cordoned: tuple[str, ...], deaf: dict[str, int]) -> None:
        bodies = {b["metadata"]["name"]: b for b in fleet.build_fleet(SPEC)}
        self.bodies = bodies
        self.nodes = {n: _node(b, cordoned=n in cordoned) for n, b in bodies.items()}
        self.deaf = Counter(deaf)
        self.ignored: set[str] = set()
        self.registered: Counter[str] = Counter()
        self.pods: dict[str, SimpleNamespace] = {}
        self.probes_made = 0

    def list_node(self, label_selector: str) -> SimpleNamespace:
        return SimpleNamespace(items=list(self.nodes.values()))

    def read_node(self, name: str) -> SimpleNamespace:
        if name not in self.nodes:
            raise ApiException(status=404)
        return self.nodes[name]

    def delete_node(self, name: str, grace_period_seconds: int) -> None:
        self.nodes.pop(name, None)

    def create_node(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        self.registered[name] += 1
        self.nodes[name] = _node(body)
        self.ignored.discard(name)
        if self.deaf[name] > 0:
            self.deaf[name] -= 1
            self.ignored.add(name)

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> None:
        assert namespace == fleet_state.PROBE_NAMESPACE
        node = body["spec"]["nodeName"]
        assert body["spec"]["tolerations"] == [{"operator": "Exists"}]  # the GPU taint
        phase = "Pending" if node in self.ignored else "Running"
        self.pods[body["metadata"]["name"]] = SimpleNamespace(
            spec=SimpleNamespace(node_name=node), status=SimpleNamespace(phase=phase)
        )
        self.probes_made += 1

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> SimpleNamespace:
        return SimpleNamespace(items=list(self.pods.values()))

    def delete_namespaced_pod(self, name: str, namespace: str, grace_period_seconds: int) -> None:
        assert grace_period_seconds == 0
        del self.pods[name]

    def list_namespace(self) -> SimpleNamespace:
        return SimpleNamespace(items=[])


@pytest.fixture(autouse=True)
def _short_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_state, "PLAY_SECONDS", 0.2)


def test_a_node_kwok_ignores_is_registered_again_until_a_pod_runs_on_it() -> None:
    cluster = _Cluster(cordoned=("spot-p4d-1",), deaf={"spot-p4d-1": 1})
    fleet_state.ensure_fleet(cluster, SPEC)
    assert cluster.registered == {"spot-p4d-1": 2}
    assert cluster.probes_made == 2 and cluster.pods == {}
    assert cluster.nodes["spot-p4d-1"].spec.unschedulable is None


def test_a_node_never_played_fails_naming_it_and_leaves_no_probe() -> None:
    cluster = _Cluster(cordoned=("spot-p4d-1",), deaf={"spot-p4d-1": 99})
    with pytest.raises(ClusterError, match="spot-p4d-1"):
        fleet_state.ensure_fleet(cluster, SPEC)
    assert cluster.registered == {"spot-p4d-1": fleet_state.PLAY_TRIES}
    assert cluster.pods == {}


def test_a_fleet_as_registered_is_left_alone_without_probes() -> None:
    cluster = _Cluster(cordoned=(), deaf={})
    fleet_state.ensure_fleet(cluster, SPEC)
    assert cluster.registered == {} and cluster.probes_made == 0
