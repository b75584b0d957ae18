"""Pure builders of the fake node fleet: an EKS spot p4d.24xlarge group and an on-demand group."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final, Literal

CapacityType = Literal["spot", "on-demand"]

INSTANCE_TYPE: Final = "p4d.24xlarge"
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_TAINT: Final = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
# kwok manages only nodes carrying this annotation; removing it is how a simulated
# instance "loses its kubelet".
KWOK_ANNOTATION: Final = "kwok.x-k8s.io/node"
FLEET_LABEL: Final = "spotrun.dev/fleet"
SPOT_PREFIX: Final = "spot-p4d-"
ON_DEMAND_PREFIX: Final = "od-p4d-"


@dataclass(frozen=True)
class FleetSpec:
    """Shape of the fake fleet; sizes come from SPOT_NODES / ON_DEMAND_NODES in make."""

    spot_nodes: int = 8
    on_demand_nodes: int = 2
    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b")
    region: str = "us-east-1"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def node_names(self) -> list[str]:
        return [f"{SPOT_PREFIX}{i}" for i in range(self.spot_nodes)] + [
            f"{ON_DEMAND_PREFIX}{i}" for i in range(self.on_demand_nodes)
        ]


def build_node(name: str, capacity_type: CapacityType, zone: str, region: str) -> dict[str, Any]:
    """A Node object as EKS registers a p4d.24xlarge of the given capacity type."""
    eks_capacity = "SPOT" if capacity_type == "spot" else "ON_DEMAND"
    capacity = {
        "cpu": "96",
        "memory": "1152Gi",
        "pods": "110",
        "ephemeral-storage": "7600Gi",
        GPU_RESOURCE: "8",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                # The kubelet registers both the GA and the legacy beta OS/arch labels
                # (kubernetes/kubernetes staging/src/k8s.io/api/core/v1/well_known_labels.go:
                # "kubelet applies both beta and GA labels"). Without them the node
                # lifecycle controller's reconcileNodeLabels adds them some time after
                # registration: a write no interruption makes, racing every trace.
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": INSTANCE_TYPE,
                "eks.amazonaws.com/capacityType": eks_capacity,
                "eks.amazonaws.com/nodegroup": f"p4d-{capacity_type}",
                "karpenter.sh/capacity-type": capacity_type,
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": region,
                "nvidia.com/gpu.present": "true",
                "type": "kwok",
                FLEET_LABEL: "true",
            },
        },
        "spec": {
            "taints": [dict(GPU_TAINT)],
            "providerID": f"aws:///{zone}/i-{hashlib.sha256(name.encode()).hexdigest()[:17]}",
        },
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def build_fleet(spec: FleetSpec) -> list[dict[str, Any]]:
    """Every node of the fleet, spread round-robin over the zones."""
    nodes = []
    for i in range(spec.spot_nodes):
        zone = spec.zones[i % len(spec.zones)]
        nodes.append(build_node(f"{SPOT_PREFIX}{i}", "spot", zone, spec.region))
    for i in range(spec.on_demand_nodes):
        zone = spec.zones[i % len(spec.zones)]
        nodes.append(build_node(f"{ON_DEMAND_PREFIX}{i}", "on-demand", zone, spec.region))
    return nodes
