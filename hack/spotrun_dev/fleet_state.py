"""Keep the fake fleet of the local cluster as configured (the I/O side of fleet.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import fleet
from spotrun_dev.plans import NOT_READY, UNREACHABLE
from spotrun_dev.waiting import wait_for

T = TypeVar("T")

# Where kubelets (and kwok for its fake nodes) keep each node's heartbeat Lease.
NODE_LEASE_NAMESPACE = "kube-node-lease"

# Writes of a node put back in place before it is replaced instead (each lost a race).
REPAIR_ATTEMPTS = 5


def ensure_fleet(core: client.CoreV1Api, spec: fleet.FleetSpec | None = None) -> None:
    """Make the fleet exactly as configured: recreate lost nodes, clear taints and cordons.

    Nodes a test interrupted are deleted, tainted, cordoned or marked not ready; this puts
    every one back the way a fresh EKS node group would register it. A node that is still
    Ready and healthy is put back in place (:func:`_repairable`); any other is deleted and
    created again, once the garbage collector has deleted the old one's Lease (see
    :func:`_lease_released`).
    """
    spec = spec or fleet_spec_from_env()
    leases = client.CoordinationV1Api(core.api_client)
    wanted = {n["metadata"]["name"]: n for n in fleet.build_fleet(spec)}
    existing = {
        n.metadata.name: n for n in core.list_node(label_selector=f"{fleet.FLEET_LABEL}=true").items
    }
    recreate = [name for name in wanted if name not in existing]
    for name, node in existing.items():
        if name not in wanted:
            _delete_node(core, name)
        elif not _drifted(node, wanted[name]):
            continue
        elif not _repair(core, node, wanted[name]):
            _delete_node(core, name)
            recreate.append(name)
    for name in recreate:
        wait_node_gone(core, name)
        wait_for(
            f"the garbage collector to delete the Lease of the deleted node {name}",
            functools.partial(_lease_released, leases, name),
            timeout=60,
        )
        core.create_node(wanted[name])
    wait_for("every fleet node to be Ready", lambda: _all_ready(core, list(wanted)), timeout=120)
    wait_for(
        "pods of namespaces being deleted to leave the fleet",
        lambda: not leftover_pods(core, set(wanted)),
        timeout=120,
    )


def _repairable(node: Any, wanted: dict[str, Any]) -> bool:
    """Drifted only in what a drain, NTH or a provider writes on a live node (labels,
    annotations, taints, the cordon): still kwok's, not deleting, Ready with no pressure
    condition, its capacity as registered. Such a node is put back in place. Deleting and
    creating it again cost each test seconds: kwok marks a node created again Ready only
    when its Lease loop next takes the node up (seen: 3-10 s per node)."""
    if node.metadata.deletion_timestamp:
        return False
    if fleet.KWOK_ANNOTATION not in (node.metadata.annotations or {}):
        return False
    conds = {c.type: c.status for c in (node.status.conditions or [])}
    if conds.get("Ready") != "True" or any(
        status == "True" for kind, status in conds.items() if kind != "Ready"
    ):
        return False
    registered: dict[str, dict[str, str]] = wanted["status"]
    capacity: dict[str, str] = node.status.capacity or {}
    allocatable: dict[str, str] = node.status.allocatable or {}
    return capacity == registered["capacity"] and allocatable == registered["allocatable"]


def _repair(core: client.CoreV1Api, node: Any, wanted: dict[str, Any]) -> bool:
    """Labels, annotations, taints and schedulability as registered (False: the node is
    gone or no longer :func:`_repairable`; it is replaced instead). A write that lost a
    race (the node lifecycle controller tainting a cordoned node) is made again on the
    node read anew."""
    name = node.metadata.name
    for _ in range(REPAIR_ATTEMPTS):
        if node is None or not _repairable(node, wanted):
            return False
        node.metadata.labels = dict(wanted["metadata"]["labels"])
        node.metadata.annotations = dict(wanted["metadata"]["annotations"])
        node.spec.taints = [client.V1Taint(**t) for t in wanted["spec"]["taints"]]
        node.spec.unschedulable = None
        try:
            core.replace_node(name, node)  # with the read resourceVersion
        except ApiException as exc:
            if exc.status == 409:
                node = _found(core.read_node, name)
                continue
            if exc.status == 404:
                return False
            raise
        return True
    return False


def _drifted(node: Any, wanted: dict[str, Any]) -> bool:
    """A node an injection touched: cordoned, extra taints, unmanaged, deleting, or labels
    other than registration gave it (a provider's capacity labels, NTH's drain label)."""
    if (node.metadata.labels or {}) != wanted["metadata"]["labels"]:
        return True
    if node.metadata.deletion_timestamp:
        return True
    if node.spec.unschedulable:
        return True
    if fleet.KWOK_ANNOTATION not in (node.metadata.annotations or {}):
        return True
    taints = [t.key for t in (node.spec.taints or [])]
    return taints != [fleet.GPU_RESOURCE]


def _delete_node(core: client.CoreV1Api, name: str) -> None:
    try:
        core.delete_node(name, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _found(read: Callable[..., T], *args: str) -> T | None:
    """What ``read(*args)`` returns, or None where the API answers 404."""
    try:
        return read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_node_gone(core: client.CoreV1Api, name: str, timeout: float = 60) -> None:
    """Wait until the API answers 404 for node ``name``."""

    def absent() -> bool:
        return _found(core.read_node, name) is None

    wait_for(f"node {name} to be deleted", absent, timeout=timeout)


def _lease_released(leases: client.CoordinationV1Api, name: str) -> bool:
    """No Lease of a deleted node is waiting for the garbage collector.

    kwok (v0.8.0, pkg/kwok/controllers) plays a pod only while its node's Lease in kwok's
    informer cache names kwok as holder (``NodeLeaseController.Held``). A node created
    again while the old Lease still exists is managed at once through that Lease; the
    garbage collector then deletes it (its owner is the old node), kwok skips every pod
    bound meanwhile as "read only", creates a new Lease one renew interval (10 s) later and
    re-lists the node's pods at once, before its own cache has the new Lease, so it skips
    them again. They wait for kwok's next relist, minutes later (seen: 160-210 s; tests
    timed out after 90). So the node is created once the old Lease is gone.

    A Lease with no owner is not waited for: kwok sometimes creates one for a node it has
    just seen deleted and renews it for good (nothing deletes it). Created again, the node
    is managed through it, and kwok's next renewal makes the new node its owner.
    """
    lease = _found(leases.read_namespaced_lease, name, NODE_LEASE_NAMESPACE)
    return lease is None or not lease.metadata.owner_references


def _all_ready(core: client.CoreV1Api, names: list[str]) -> bool:
    """Ready, and the node lifecycle controller has taken its not-ready/unreachable taint
    off again: a node just created (or one whose heartbeat was late) carries it for up to
    a monitor period after kwok reports Ready, and a test reading the fleet then saw
    ``node.kubernetes.io/not-ready:NoSchedule`` beside the GPU taint."""
    for name in names:
        node = core.read_node(name)
        conds = {c.type: c.status for c in (node.status.conditions or [])}
        if conds.get("Ready") != "True":
            return False
        if any(t.key in (NOT_READY, UNREACHABLE) for t in node.spec.taints or []):
            return False
    return True


def leftover_pods(core: client.CoreV1Api, nodes: set[str]) -> list[str]:
    """Pods still bound to a fleet node whose namespace is being deleted.

    A namespace's deletion returns before its pods are gone. Until they are, they hold
    GPUs a new user cannot get, and a disruption (a Karpenter do-not-disrupt pod, an NTH
    drain) would see them on the node: the fleet is not yet as freshly registered.
    """
    leaving = {
        ns.metadata.name
        for ns in core.list_namespace().items
        if ns.metadata.deletion_timestamp or (ns.status and ns.status.phase == "Terminating")
    }
    if not leaving:
        return []
    return [
        f"{p.metadata.namespace}/{p.metadata.name}"
        for p in core.list_pod_for_all_namespaces().items
        if p.metadata.namespace in leaving and p.spec.node_name in nodes
    ]


def fleet_spec_from_env() -> fleet.FleetSpec:
    return fleet.FleetSpec(
        spot_nodes=int(os.environ.get("SPOT_NODES", "8")),
        on_demand_nodes=int(os.environ.get("ON_DEMAND_NODES", "2")),
    )
