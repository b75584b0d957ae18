from __future__ import annotations

from spotrun_dev import fleet


def test_spot_and_on_demand_groups() -> None:
    nodes = fleet.build_fleet(fleet.FleetSpec(spot_nodes=4, on_demand_nodes=2))
    assert [n["metadata"]["name"] for n in nodes] == [
        "spot-p4d-0",
        "spot-p4d-1",
        "spot-p4d-2",
        "spot-p4d-3",
        "od-p4d-0",
        "od-p4d-1",
    ]
    spot = [n for n in nodes if n["metadata"]["labels"]["karpenter.sh/capacity-type"] == "spot"]
    assert {n["metadata"]["labels"]["eks.amazonaws.com/capacityType"] for n in spot} == {"SPOT"}
    assert {n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in spot} == {
        "us-east-1a",
        "us-east-1b",
    }
    od = nodes[4]["metadata"]["labels"]
    assert od["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    assert od["karpenter.sh/capacity-type"] == "on-demand"


def test_node_shape() -> None:
    node = fleet.build_node("spot-p4d-0", "spot", "us-east-1a", "us-east-1")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert node["metadata"]["annotations"][fleet.KWOK_ANNOTATION] == "fake"
    # Stable across processes (no salted hash()).
    again = fleet.build_node("spot-p4d-0", "spot", "us-east-1a", "us-east-1")
    assert node["spec"]["providerID"] == again["spec"]["providerID"]
    assert node["spec"]["providerID"].startswith("aws:///us-east-1a/i-")
