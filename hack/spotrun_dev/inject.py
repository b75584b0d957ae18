"""Inject what the real components do to nodes and pods, through the Kubernetes API.

``interrupt`` performs a plan (``plans_k8s.plan``): the ordered writes of the Node
Termination Handler, Karpenter, Cluster Autoscaler, EKS managed node groups, GKE, AKS,
the kubelet, the node lifecycle controller and the cloud controller manager, each with
the same call, the same field values and the same timing as the component. Writes the
local cluster's own kube-controller-manager and apiserver make (the Eviction API's
DisruptionTarget, taint eviction, pod garbage collection) are left to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from spotrun_dev import node_ops, plans, plans_k8s, traces
from spotrun_dev.plans import Options, Write
from spotrun_dev.traces import FailReason, Signal
from spotrun_dev.waiting import wait_for

log = logging.getLogger("spotrun_dev.inject")
NODE_LIFECYCLE = "kube-controller-manager/node-lifecycle"
# Seconds the interruption notice gives, for ``instance_dies_after=None``.
NOTICE_SECONDS: dict[str, float] = {
    "nth": 120,
    "scheduled-maintenance": 120,
    "aks-evict": 30,
}
pods_on_node = node_ops.pods_on_node
evict_pods = node_ops.evict_pods
delete_node = node_ops.delete_node


@dataclass
class Run:
    """One interruption in progress: the node, when the notice started, the options."""

    core: client.CoreV1Api
    node: str
    signal: str
    started: float
    instance_dies_after: float | None
    drain_timeout: float
    grace_timeout: float = 180
    real_lifecycle: bool = False  # the real node lifecycle controller marks the node

    def notice_left(self) -> float:
        if self.instance_dies_after is not None:
            return max(0.0, self.started + self.instance_dies_after - time.monotonic())
        notice = NOTICE_SECONDS.get(self.signal, 0)
        return max(0.0, self.started + notice - time.monotonic())


def prepare_node(core: client.CoreV1Api, node: str, signal: str) -> None:
    """What the node carries before the component acts: Karpenter's finalizer (added at
    registration: kubernetes-sigs/karpenter pkg/controllers/nodeclaim/lifecycle/
    registration.go), the provider's capacity labels (GKE, AKS)."""
    if signal.startswith("karpenter"):
        node_ops.add_finalizer(core, node, plans_k8s.KARPENTER_FINALIZER)
    labels = plans_k8s.PROVIDER_LABELS.get(signal)
    have = node_ops.read_node(core, node)["metadata"].get("labels") or {}
    if labels and any(have.get(k) != v for k, v in labels.items()):
        core.patch_node(node, {"metadata": {"labels": labels}})


def opted_out(core: client.CoreV1Api, node: str, signal: str) -> str | None:
    """The pod whose annotation keeps a voluntary disruption away from the node."""
    rule = plans_k8s.OPT_OUTS.get(signal)
    if rule is None:
        return None
    key, value = rule
    for pod in node_ops.pods_on_node(core, node):
        if (pod.metadata.annotations or {}).get(key) == value:
            return f"{pod.metadata.namespace}/{pod.metadata.name} has {key}={value}"
    return None


def interrupt(
    core: client.CoreV1Api,
    node: str,
    signal: Signal | str,
    *,
    delete_node_after: bool = True,
    drain_timeout: float = 120,
    instance_dies_after: float | None = 0.0,
    opts: Options | None = None,
    on_start: Callable[[], None] | None = None,
) -> list[Write]:
    """Take ``node`` away the way the component behind ``signal`` does; returns the writes
    made. ``instance_dies_after``: seconds from the start until the instance dies (None:
    at the end of the notice); ``delete_node_after=False`` stops before the instance dies.
    ``on_start`` is called once the node is prepared, just before the plan's first write:
    the moment the component acts (what a benchmark times as the signal; the checks and
    the node's earlier state, e.g. Karpenter's registration finalizer, come before it).
    """
    if signal not in traces.SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(traces.SIGNALS)}, got {signal!r}")
    core.read_node(node)  # 404 early with a clear error for a wrong name
    blocked = opted_out(core, node, signal)
    if blocked:
        log.info("%s leaves node %s alone: %s", signal, node, blocked)
        return []
    prepare_node(core, node, signal)
    opts = opts or Options()
    run = Run(core, node, signal, time.monotonic(), instance_dies_after, drain_timeout)
    run.real_lifecycle = not opts.play_node_lifecycle
    if on_start is not None:
        on_start()
    done: list[Write] = []
    for write in plans_k8s.plan(signal, opts):
        if _dies(write) and not delete_node_after:
            break
        _wait_turn(run, write)
        if write.actor == NODE_LIFECYCLE and not opts.play_node_lifecycle:
            _await_node_lifecycle(run, write)
        else:
            log.info("%s: %s %s %s", node, write.actor, write.call, list(write.changes))
            perform(run, write)
        done.append(write)
    return done


def _dies(write: Write) -> bool:
    return any("kubelet_stops" in c for c in write.changes)


def _wait_turn(run: Run, write: Write) -> None:
    """The timing of the write: the end of the notice, or right after the previous one."""
    if write.after == plans.AFTER_NOTICE:
        time.sleep(run.notice_left())  # the cloud's clock, not a test's poll


def _await_node_lifecycle(run: Run, write: Write) -> None:
    """Leave the node lifecycle controller's write to the real one, and wait for it."""
    want = write.changes[0]

    def seen() -> bool:
        node = node_ops.read_node(run.core, run.node)
        if "conditions" in want:
            ready: dict[str, Any] = next(
                (c for c in node["status"].get("conditions") or [] if c["type"] == "Ready"), {}
            )
            return bool(ready.get("status") == "Unknown")
        t = want["taint_added"]
        have = node["spec"].get("taints") or []
        return any((x["key"], x["effect"]) == (t["key"], t["effect"]) for x in have)

    wait_for(f"the node lifecycle controller on {run.node}", seen, timeout=run.grace_timeout)


def perform(run: Run, write: Write) -> None:
    """One write of a plan, with the call its component makes."""
    core, name = run.core, run.node
    merged: dict[str, Any] = {}
    for change in write.changes:
        merged.update(change)
    if write.obj == "pods":
        _perform_pods(run, merged)
        return
    if write.obj in ("event", "pod-event"):
        _perform_event(run, write, merged["event"])
        return
    taints = [_taint(write, merged["taint_added"])] if "taint_added" in merged else []
    label = merged.get("label_added")
    if write.call.startswith("PUT node/status"):
        node_ops.post_conditions(core, name, list(merged["conditions"]))
    elif "finalizer_removed" in merged:
        node_ops.remove_finalizer(core, name, str(merged["finalizer_removed"]))
        node_ops.release_lease(core, name)
    elif "node_deleting" in merged or "node_deleted" in merged:
        node_ops.delete_node(core, name)
        if "node_deleted" in merged:
            node_ops.release_lease(core, name)
    elif "kubelet_stops" in merged:
        node_ops.stop_kubelet(core, name, hold_lease=run.real_lifecycle)
    elif "cordoned" in merged:
        node_ops.cordon(core, name)
    elif write.call == "PUT node":
        node_ops.update_node(core, name, taints)
    elif taints:
        labels = {label["key"]: label["value"]} if label else None
        node_ops.patch_node_locked(core, name, taints, labels)
    elif "taint_removed" in merged:
        node_ops.untaint_locked(core, name, merged["taint_removed"])
    elif label:
        node_ops.label_node(core, name, label["key"], label["value"])
    else:
        raise ValueError(f"no call for {write}")


def _taint(write: Write, taint: dict[str, Any]) -> dict[str, Any]:
    # The node lifecycle controller stamps the NoExecute taints it adds
    # (pkg/controller/controller_utils.go SwapNodeControllerTaint: TimeAdded = now).
    if write.actor == NODE_LIFECYCLE and taint["effect"] == "NoExecute":
        return {**taint, "timeAdded": traces.rfc3339(node_ops.now())}
    return dict(taint)


def _perform_event(run: Run, write: Write, event: dict[str, Any]) -> None:
    """Events go on the Node (namespace default, as NTH's recorder does) or on each pod."""
    if write.obj == "event":
        ref = client.V1ObjectReference(kind="Node", name=run.node, namespace="default")
        node_ops.record_event(run.core, ref, event, write.actor, run.node)
        return
    for pod in node_ops.pods_on_node(run.core, run.node):
        if pod.metadata.deletion_timestamp:
            continue
        ref = client.V1ObjectReference(
            kind="Pod",
            name=pod.metadata.name,
            namespace=pod.metadata.namespace,
            uid=pod.metadata.uid,
            api_version="v1",
        )
        text = {**event, "message": str(event["message"]).format(node=run.node)}
        node_ops.record_event(run.core, ref, text, write.actor, run.node)


def _perform_pods(run: Run, merged: dict[str, Any]) -> None:
    if "drained_by" in merged:
        deadline = run.started + merged["drained_by"]["terminationGracePeriod"]
        node_ops.drain_by_deadline(run.core, run.node, deadline, run.drain_timeout)
        return
    if "evicted" in merged:
        grace = merged["evicted"]["gracePeriodSeconds"]
        node_ops.evict_pods(run.core, run.node, grace, timeout=run.drain_timeout)
        return
    change = merged["pod_status"]
    for pod in node_ops.pods_on_node(run.core, run.node):
        if pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp:
            continue
        pod_dict = node_ops.as_dict(run.core.api_client, pod)
        status = traces.kubelet_stopped_pod_status(pod_dict, change, node_ops.now())
        node_ops.set_pod_status(run.core, pod, str(change["reason"]).lower(), status)


def component_writes(signal: str, opts: Options | None = None) -> list[Write]:
    """The writes of the component alone, before the instance dies."""
    out: list[Write] = []
    for write in plans_k8s.plan(signal, opts):
        if _dies(write):
            break
        out.append(write)
    return out


def run_writes(
    core: client.CoreV1Api, node: str, writes: list[Write], drain_timeout: float = 300
) -> None:
    """Perform some writes of a plan on ``node`` (the real-node path uses this)."""
    run = Run(core, node, "custom", time.monotonic(), 0.0, drain_timeout)
    for write in writes:
        perform(run, write)


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
    status = traces.failed_pod_status(node_ops.as_dict(core.api_client, p), reason, node_ops.now())
    node_ops.set_pod_status(core, p, reason, status)


def complete_pod(core: client.CoreV1Api, namespace: str, pod: str, timeout: float = 60) -> None:
    """Every container of the pod exits 0."""
    p = _wait_running(core, namespace, pod, timeout)
    status = traces.completed_pod_status(node_ops.as_dict(core.api_client, p), node_ops.now())
    node_ops.set_pod_status(core, p, "complete", status)
