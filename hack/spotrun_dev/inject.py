"""Inject what EKS really does to nodes and pods, through the Kubernetes API.

Each function performs the same API calls, in the same order, as the real component:
the AWS Node Termination Handler (taint, cordon, drain through the Eviction API), Karpenter
(disruption taint, eviction), the node lifecycle controller (a lost node goes Unknown), the
kubelet (graceful node shutdown, container exits), and finally the cloud controller that
removes the Node of a terminated instance.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import fleet, kwok_config, traces
from spotrun_dev.cluster import wait_for
from spotrun_dev.traces import FailReason, Signal

log = logging.getLogger("spotrun_dev.inject")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    return dict(api.sanitize_for_serialization(obj))


def pods_on_node(core: client.CoreV1Api, node: str) -> list[client.V1Pod]:
    return list(core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items)


def _add_taint(core: client.CoreV1Api, node: str, taint: dict[str, Any], cordon: bool) -> None:
    """Add a taint (and cordon) with a compare-and-swap on the whole taint list, retrying
    on conflict like kubectl does: other controllers edit the same Node concurrently."""
    for _ in range(10):
        current = core.read_node(node)
        taints = [
            core.api_client.sanitize_for_serialization(t) for t in (current.spec.taints or [])
        ]
        if not any((t["key"], t["effect"]) == (taint["key"], taint["effect"]) for t in taints):
            taints.append({**taint, "timeAdded": traces.rfc3339(_now())})
        spec: dict[str, Any] = {"taints": taints}
        if cordon:
            spec["unschedulable"] = True
        try:
            core.patch_node(
                node,
                {"metadata": {"resourceVersion": current.metadata.resource_version}, "spec": spec},
            )
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"could not taint node {node}: it kept changing under us")


def _stop_kwok_managing(core: client.CoreV1Api, node: str) -> None:
    """The instance's kubelet is gone: kwok stops heartbeating the node and its pods."""
    core.patch_node(node, {"metadata": {"annotations": {fleet.KWOK_ANNOTATION: None}}})


def _patch_node_conditions(
    core: client.CoreV1Api, node: str, conditions: list[dict[str, Any]]
) -> None:
    core.patch_node_status(node, {"status": {"conditions": conditions}})


def evict_pods(core: client.CoreV1Api, node: str, timeout: float = 120) -> None:
    """Drain: evict every pod on the node through the Eviction API, retrying while a
    PodDisruptionBudget refuses (429), then wait for the pods to be gone."""
    for pod in pods_on_node(core, node):
        if pod.metadata.deletion_timestamp:
            continue
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace)
        )

        def evicted(p: client.V1Pod = pod, b: client.V1Eviction = body) -> bool:
            try:
                core.create_namespaced_pod_eviction(p.metadata.name, p.metadata.namespace, b)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                if exc.status == 429:
                    return False
                raise
            return True

        wait_for(
            f"eviction of {pod.metadata.namespace}/{pod.metadata.name}",
            evicted,
            timeout=timeout,
            interval=1,
        )
    wait_for(f"pods on {node} to terminate", lambda: not pods_on_node(core, node), timeout=timeout)


def delete_node(core: client.CoreV1Api, node: str) -> None:
    """The instance is gone; the cloud controller removes its Node."""
    try:
        core.delete_node(node)
    except ApiException as exc:
        if exc.status != 404:
            raise


def interrupt(
    core: client.CoreV1Api,
    node: str,
    signal: Signal,
    *,
    delete_node_after: bool = True,
    drain_timeout: float = 120,
) -> None:
    """Reclaim ``node`` the way the named component does. See traces.SIGNALS."""
    if signal not in traces.SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(traces.SIGNALS)}, got {signal!r}")
    core.read_node(node)  # 404 early with a clear error for a wrong name
    event_id = f"{signal}-{uuid.uuid4().hex[:12]}"
    log.info("interrupting node %s with signal %s", node, signal)
    if signal == "rebalance":
        # A rebalance recommendation is advice: NTH taints the node and nothing else.
        taint = traces.interruption_taint(signal, event_id)
        assert taint is not None
        _add_taint(core, node, taint, cordon=False)
        return
    if signal in traces.EVICTING_SIGNALS:
        taint = traces.interruption_taint(signal, event_id)
        assert taint is not None
        _add_taint(core, node, taint, cordon=True)
        evict_pods(core, node, timeout=drain_timeout)
    elif signal == "loss":
        before = core.read_node(node)
        ready = next((c for c in before.status.conditions or [] if c.type == "Ready"), None)
        heartbeat = (
            traces.rfc3339(ready.last_heartbeat_time)
            if ready and ready.last_heartbeat_time
            else None
        )
        _stop_kwok_managing(core, node)
        # We play the node lifecycle controller at the end of its grace period: it marks
        # the node Unknown and taints it unreachable (NoExecute), which is what evicts pods
        # after their tolerationSeconds. Waiting for the real controller would cost its
        # grace period (kept long here so busy kwok heartbeats don't flap healthy nodes).
        _patch_node_conditions(core, node, traces.node_unknown_conditions(_now(), heartbeat))
        _add_taint(core, node, {"key": traces.UNREACHABLE, "effect": "NoExecute"}, cordon=False)
    elif signal == "shutdown":
        _stop_kwok_managing(core, node)
        _patch_node_conditions(core, node, [traces.node_shutting_down_condition(_now())])
        for pod in pods_on_node(core, node):
            _set_pod_status(
                core,
                pod,
                "shutdown",
                traces.shutdown_pod_status(_as_dict(core.api_client, pod), _now()),
            )
    if delete_node_after:
        delete_node(core, node)


def _set_pod_status(
    core: client.CoreV1Api, pod: client.V1Pod, simulated: str, status: dict[str, Any]
) -> None:
    name, ns = pod.metadata.name, pod.metadata.namespace
    # Mark first, so kwok's Stages leave the status the kubelet reported alone.
    core.patch_namespaced_pod(
        name, ns, {"metadata": {"annotations": {kwok_config.SIMULATED_ANNOTATION: simulated}}}
    )
    core.patch_namespaced_pod_status(name, ns, {"status": status})


def _wait_running(core: client.CoreV1Api, namespace: str, pod: str, timeout: float) -> client.V1Pod:
    """Containers can only exit once they started: wait for the pod to be scheduled."""
    found: list[client.V1Pod] = []

    def scheduled() -> bool:
        p = core.read_namespaced_pod(pod, namespace)
        found[:] = [p]
        return bool(p.spec.node_name)

    wait_for(f"pod {namespace}/{pod} to be scheduled", scheduled, timeout=timeout)
    return found[0]


def fail_pod(
    core: client.CoreV1Api, namespace: str, pod: str, reason: FailReason, timeout: float = 60
) -> None:
    """An application crash (exit 1), an OOM kill (137, OOMKilled) or a bad image."""
    if reason not in traces.FAIL_REASONS:
        raise ValueError(f"reason must be one of {', '.join(traces.FAIL_REASONS)}, got {reason!r}")
    p = _wait_running(core, namespace, pod, timeout)
    status = traces.failed_pod_status(_as_dict(core.api_client, p), reason, _now())
    _set_pod_status(core, p, reason, status)


def complete_pod(core: client.CoreV1Api, namespace: str, pod: str, timeout: float = 60) -> None:
    """Every container of the pod exits 0."""
    p = _wait_running(core, namespace, pod, timeout)
    _set_pod_status(
        core, p, "complete", traces.completed_pod_status(_as_dict(core.api_client, p), _now())
    )
