"""The Kubernetes API calls the real components make on nodes and pods, one per function.

Each function makes exactly the call the component makes (a PUT of the whole Node for
NTH and Cluster Autoscaler, a PATCH guarded by the resourceVersion for Karpenter and the
controllers, the Eviction API for every drain), so that the apiserver's watch shows the
same sequence of updates.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import fleet, kwok_config, traces
from spotrun_dev.waiting import wait_for

log = logging.getLogger("spotrun_dev.node_ops")
CONFLICT_RETRIES = 20


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    return dict(api.sanitize_for_serialization(obj))


def read_node(core: client.CoreV1Api, name: str) -> dict[str, Any]:
    return as_dict(core.api_client, core.read_node(name))


def pods_on_node(core: client.CoreV1Api, node: str) -> list[client.V1Pod]:
    return list(core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items)


def _retry_conflicts(what: str, attempt: Callable[[], None]) -> None:
    for _ in range(CONFLICT_RETRIES):
        try:
            attempt()
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"{what}: the object kept changing under us")


def _with_taints(node: dict[str, Any], add: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The node's taints plus ``add`` (by key and effect); None if nothing is new."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    new = [
        t
        for t in add
        if not any((o["key"], o["effect"]) == (t["key"], t["effect"]) for o in taints)
    ]
    return taints + new if new else None


def update_node(
    core: client.CoreV1Api,
    name: str,
    taints: list[dict[str, Any]] | None = None,
    unschedulable: bool = False,
) -> None:
    """GET then PUT the whole Node with more taints (NTH addTaint, CA AddTaints)."""

    def attempt() -> None:
        node = read_node(core, name)
        merged = _with_taints(node, list(taints or []))
        if merged is None and not unschedulable:
            return
        node["spec"]["taints"] = merged or node["spec"].get("taints")
        if unschedulable:
            node["spec"]["unschedulable"] = True
        core.replace_node(name, node)

    _retry_conflicts(f"update node {name}", attempt)


def patch_node_locked(
    core: client.CoreV1Api,
    name: str,
    taints: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """A merge PATCH carrying the resourceVersion (controller-runtime's
    MergeFromWithOptimisticLock; client-go PatchNodeTaints): taints and labels at once."""

    def attempt() -> None:
        node = read_node(core, name)
        merged = _with_taints(node, list(taints or []))
        have = (node["metadata"].get("labels") or {}).items()
        new_labels = {k: v for k, v in (labels or {}).items() if (k, v) not in have}
        if merged is None and not new_labels:
            return
        body: dict[str, Any] = {
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}
        }
        if new_labels:
            body["metadata"]["labels"] = new_labels
        if merged is not None:
            body["spec"] = {"taints": merged}
        core.patch_node(name, body)

    _retry_conflicts(f"patch node {name}", attempt)


def untaint_locked(core: client.CoreV1Api, name: str, taint: dict[str, Any]) -> None:
    """A merge PATCH with the resourceVersion dropping one taint (key and effect)."""

    def attempt() -> None:
        node = read_node(core, name)
        taints = list((node.get("spec") or {}).get("taints") or [])
        kept = [t for t in taints if (t["key"], t["effect"]) != (taint["key"], taint["effect"])]
        if len(kept) == len(taints):
            return
        rv = node["metadata"]["resourceVersion"]
        core.patch_node(name, {"metadata": {"resourceVersion": rv}, "spec": {"taints": kept}})

    _retry_conflicts(f"untaint node {name}", attempt)


def label_node(core: client.CoreV1Api, name: str, key: str, value: str) -> None:
    """A strategic merge PATCH of one label (NTH addLabel)."""
    core.patch_node(name, {"metadata": {"labels": {key: value}}})


def cordon(core: client.CoreV1Api, name: str) -> None:
    """kubectl's drain.RunCordonOrUncordon: a PATCH of spec.unschedulable only."""
    core.patch_node(name, {"spec": {"unschedulable": True}})


def add_finalizer(core: client.CoreV1Api, name: str, finalizer: str) -> None:
    node = read_node(core, name)
    if finalizer not in (node["metadata"].get("finalizers") or []):
        core.patch_node(name, {"metadata": {"finalizers": [finalizer]}})


def remove_finalizer(core: client.CoreV1Api, name: str, finalizer: str) -> None:
    """A JSON patch guarded by the resourceVersion; the apiserver then deletes the
    deleting Node on this very write."""

    def attempt() -> None:
        node = read_node(core, name)
        kept = [f for f in node["metadata"].get("finalizers") or [] if f != finalizer]
        rv = node["metadata"]["resourceVersion"]
        core.patch_node(
            name,
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "replace", "path": "/metadata/finalizers", "value": kept},
            ],
        )

    _retry_conflicts(f"remove finalizer from node {name}", attempt)


def delete_node(core: client.CoreV1Api, name: str) -> None:
    try:
        core.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


NODE_LEASES = "kube-node-lease"
GONE_HOLDER = "terminated-instance"
NEVER_EXPIRES = 10 * 365 * 24 * 3600


def stop_kubelet(core: client.CoreV1Api, name: str, hold_lease: bool = False) -> None:
    """The instance is gone: kwok stops managing the node and its pods.

    kwok keeps renewing the node Lease of a node it stopped managing, so the real node
    lifecycle controller would never see the heartbeats stop. With ``hold_lease`` the Lease
    goes to a holder that never renews it and never expires (``release_lease`` undoes it
    once the Node is gone): only for waiting on the real controller, since a recreated
    node of the same name could not renew a held Lease."""
    core.patch_node(name, {"metadata": {"annotations": {fleet.KWOK_ANNOTATION: None}}})
    if not hold_lease:
        return
    leases = client.CoordinationV1Api(core.api_client)
    body = {"spec": {"holderIdentity": GONE_HOLDER, "leaseDurationSeconds": NEVER_EXPIRES}}
    try:
        leases.patch_namespaced_lease(name, NODE_LEASES, body)
    except ApiException as exc:
        if exc.status != 404:
            raise


def release_lease(core: client.CoreV1Api, name: str) -> None:
    """Delete a Lease ``stop_kubelet`` held, as the garbage collector would with its Node."""
    leases = client.CoordinationV1Api(core.api_client)
    try:
        lease = leases.read_namespaced_lease(name, NODE_LEASES)
        if lease.spec.holder_identity == GONE_HOLDER:
            leases.delete_namespaced_lease(name, NODE_LEASES)
    except ApiException as exc:
        if exc.status != 404:
            raise


def post_conditions(core: client.CoreV1Api, name: str, conditions: list[dict[str, Any]]) -> None:
    """Node conditions as the kubelet or the node lifecycle controller posts them; an
    Unknown condition keeps the last heartbeat the kubelet sent."""
    node = read_node(core, name)
    old = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or []}
    stamp = traces.rfc3339(now())
    full = []
    for c in conditions:
        beat = (old.get(c["type"]) or {}).get("lastHeartbeatTime") or stamp
        heartbeat = beat if c["status"] == "Unknown" else stamp
        full.append({**c, "lastTransitionTime": stamp, "lastHeartbeatTime": heartbeat})
    core.patch_node_status(name, {"status": {"conditions": full}})


def set_pod_status(
    core: client.CoreV1Api, pod: client.V1Pod, mark: str, status: dict[str, Any]
) -> None:
    """The status the kubelet reports for a pod it stopped; nothing for a pod already gone.

    A pod the operator's job deletion removed while the node shut down is skipped, as the
    kubelet's status manager skips it (kubernetes pkg/kubelet/status/status_manager.go,
    syncPod: ``errors.IsNotFound`` -> "Pod does not exist on the server", return).
    """
    name, ns = pod.metadata.name, pod.metadata.namespace
    try:
        # Mark first, so kwok's Stages leave the status the kubelet reported alone.
        core.patch_namespaced_pod(
            name, ns, {"metadata": {"annotations": {kwok_config.SIMULATED_ANNOTATION: mark}}}
        )
        core.patch_namespaced_pod_status(name, ns, {"status": status})
    except ApiException as exc:
        if exc.status != 404:
            raise
        log.info("pod %s/%s is gone: no status to report", ns, name)


def grace_for(pod: client.V1Pod, grace: int | str | None) -> int | None:
    """None: the pod's own period; an int: that; ``min(pod,N)``: the smaller."""
    if grace is None or isinstance(grace, int):
        return grace
    cap = int(grace.removeprefix("min(pod,").removesuffix(")"))
    own = pod.spec.termination_grace_period_seconds
    return min(30 if own is None else int(own), cap)


def evict_pods(
    core: client.CoreV1Api, node: str, grace: int | str | None, timeout: float = 120
) -> None:
    """A drain: one eviction per pod, all at once (kubectl pkg/drain/drain.go evictPods
    starts a goroutine per pod), retrying while a PodDisruptionBudget answers 429, then
    waiting for that pod to be gone (:func:`wait_for_delete`).

    Pods someone else is already deleting are drained too: kubectl's skipDeletedFilter
    (pkg/drain/filters.go) skips them only past SkipWaitForDeleteTimeoutSeconds, which NTH
    leaves at 0 (pkg/node/node.go getDrainHelper). So the drain evicts them as well (the
    apiserver ignores PDBs for them: pkg/registry/core/pod/storage/eviction.go
    canIgnorePDB) and waits for them. A drain that returned at once there let the
    instance die under pods still saving their checkpoint."""
    pods = pods_on_node(core, node)
    errors: list[BaseException] = []

    def one(pod: client.V1Pod) -> None:
        seconds = grace_for(pod, grace)
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace),
            delete_options=None
            if seconds is None
            else client.V1DeleteOptions(grace_period_seconds=seconds),
        )

        def evicted() -> bool:
            try:
                core.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, body)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                if exc.status == 429:
                    return False
                raise
            return True

        try:
            wait_for(f"eviction of {pod.metadata.name}", evicted, timeout=timeout, interval=1)
            wait_for_delete(core, pod, timeout)
        except BaseException as exc:  # surfaced after join
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    if errors:
        raise errors[0]


def wait_for_delete(core: client.CoreV1Api, pod: client.V1Pod, timeout: float) -> None:
    """kubectl's waitForDelete (pkg/drain/drain.go), as each eviction's goroutine runs it:
    GET the pod by name every second, the first at once (``PollUntilContextTimeout``
    immediate, ``interval: 1 * time.Second``), until it answers 404 or a pod of another
    UID holds the name. A GET by name reads one key; listing the node's pods again (what
    this did before) read every pod of the cluster from etcd at each poll: 340 such lists
    in the 18 s of a 100-node burst, at 450 ms each (bench/operator_scale.py)."""
    name, namespace, uid = pod.metadata.name, pod.metadata.namespace, pod.metadata.uid

    def gone() -> bool:
        try:
            fresh = core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return bool(fresh.metadata.uid != uid)

    wait_for(f"pod {namespace}/{name} to terminate", gone, timeout=timeout, interval=1)


def drain_by_deadline(
    core: client.CoreV1Api, node: str, deadline: float, timeout: float = 120
) -> None:
    """Karpenter's drain with a terminationGracePeriod (kubernetes-sigs/karpenter
    pkg/controllers/node/termination/terminator/eviction.go needsForceDelete, forceDelete):
    a pod whose own grace no longer fits before the deadline (a ``time.monotonic()``) is
    deleted with the time left (at least 1 s); the others are evicted."""
    left = deadline - time.monotonic()
    for pod in pods_on_node(core, node):
        if pod.metadata.deletion_timestamp:
            continue
        own = pod.spec.termination_grace_period_seconds
        if (30 if own is None else int(own)) >= left:
            core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=max(1, int(left))
            )
    evict_pods(core, node, None, timeout)
    wait_for(f"pods on {node} to be gone", lambda: not pods_on_node(core, node), timeout=timeout)


def record_event(
    core: client.CoreV1Api,
    obj: client.V1ObjectReference,
    event: dict[str, Any],
    component: str,
    host: str,
) -> None:
    """A core/v1 Event as client-go's record.EventRecorder posts it (name
    ``<object>.<hex nanoseconds>``, count 1, first and last timestamp now)."""
    stamp = now()
    namespace = obj.namespace or "default"
    body = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"{obj.name}.{time.time_ns():x}", namespace=namespace),
        involved_object=obj,
        reason=event["reason"],
        message=event["message"],
        type=event["type"],
        source=client.V1EventSource(component=component, host=host),
        first_timestamp=stamp,
        last_timestamp=stamp,
        count=1,
    )
    try:
        core.create_namespaced_event(namespace, body)
    except ApiException as exc:
        # client-go's recorder never fails its caller: recordToSink gives up on an event the
        # apiserver refuses (kubernetes/client-go tools/record/event.go recordToSink,
        # recordEvent), e.g. in a namespace being deleted (403).
        log.warning("event %s on %s not recorded: %s", event["reason"], obj.name, exc.status)
