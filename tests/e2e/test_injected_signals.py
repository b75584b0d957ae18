"""Every spotrun-dev injection leaves exactly the traces the real EKS component leaves."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kube_helpers import (
    PYTORCHJOB,
    condition,
    holds,
    job_condition,
    poll,
    pytorchjob,
    running_pods,
)
from recorder import Recorded, Recorder
from spotrun_dev import inject, traces


def _start_job(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, workers: int = 1
) -> list[client.V1Pod]:
    custom.create_namespaced_custom_object(
        *PYTORCHJOB[:2], namespace, PYTORCHJOB[2], pytorchjob("job", workers=workers)
    )
    pods: list[client.V1Pod] = running_pods(core, namespace, "job", workers + 1)
    return pods


def _master(pods: list[client.V1Pod]) -> client.V1Pod:
    return next(
        p for p in pods if p.metadata.labels["training.kubeflow.org/replica-type"] == "master"
    )


def _node_gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_node(name)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def _taints(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in (node.get("spec") or {}).get("taints") or []}


@pytest.mark.parametrize("signal", ["nth", "karpenter", "asg"])
def test_evicting_signals_taint_cordon_evict_then_delete_node(
    signal: traces.Signal,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
) -> None:
    pod = _master(_start_job(core, custom, namespace))
    node = pod.spec.node_name
    nodes = Recorder(
        api_client, core.list_node, {"field_selector": f"metadata.name={node}"}
    ).start()
    pods = Recorder(api_client, core.list_namespaced_pod, {"namespace": namespace}).start()
    try:
        inject.interrupt(core, node, signal)
        taint_key = traces.SIGNAL_TAINT[signal]
        tainted = nodes.wait_for(
            "the interruption taint and cordon",
            lambda e: (
                e.type == "MODIFIED"
                and taint_key in _taints(e.obj)
                and bool(e.obj["spec"].get("unschedulable"))
            ),
        )
        assert taint_key is not None
        taint = _taints(tainted.obj)[taint_key]
        assert taint["effect"] == "NoSchedule"
        if signal == "karpenter":
            assert "value" not in taint
        else:
            assert taint["value"].startswith(f"{signal}-")

        def disrupted(e: Recorded) -> bool:
            cond = condition(e.obj, "DisruptionTarget")
            return (
                e.obj["metadata"]["uid"] == pod.metadata.uid
                and cond is not None
                and cond["status"] == "True"
            )

        ev = pods.wait_for("DisruptionTarget on the evicted pod", disrupted)
        cond = condition(ev.obj, "DisruptionTarget")
        assert cond is not None and cond["reason"] == "EvictionByEvictionAPI"
        # Graceful: the pod keeps its 110 s grace period, it is not force-deleted.
        deleting = pods.wait_for(
            "graceful deletion of the evicted pod",
            lambda e: (
                e.obj["metadata"]["uid"] == pod.metadata.uid
                and e.obj["metadata"].get("deletionTimestamp") is not None
            ),
        )
        assert deleting.obj["metadata"]["deletionGracePeriodSeconds"] == 110
        pods.wait_for(
            "the evicted pod to be gone",
            lambda e: e.type == "DELETED" and e.obj["metadata"]["uid"] == pod.metadata.uid,
        )
        nodes.wait_for("the node to be deleted", lambda e: e.type == "DELETED")
        assert _node_gone(core, node)
    finally:
        nodes.stop()
        pods.stop()


def test_rebalance_recommendation_only_taints(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
) -> None:
    pod = _master(_start_job(core, custom, namespace))
    node = pod.spec.node_name
    inject.interrupt(core, node, "rebalance")
    n = core.read_node(node)
    taints = {t.key: t for t in n.spec.taints}
    assert taints[traces.NTH_REBALANCE].effect == "NoSchedule"
    assert not n.spec.unschedulable
    live = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert live.status.phase == "Running" and live.metadata.deletion_timestamp is None
    assert condition(api_dict(core, live), "DisruptionTarget") is None


def api_dict(core: client.CoreV1Api, obj: Any) -> dict[str, Any]:
    return dict(core.api_client.sanitize_for_serialization(obj))


def test_loss_node_unknown_then_deleted_pods_lost_without_grace(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
) -> None:
    pod = _master(_start_job(core, custom, namespace))
    node = pod.spec.node_name
    nodes = Recorder(
        api_client, core.list_node, {"field_selector": f"metadata.name={node}"}
    ).start()
    try:
        inject.interrupt(core, node, "loss")
        unknown = nodes.wait_for(
            "Ready=Unknown", lambda e: (condition(e.obj, "Ready") or {}).get("status") == "Unknown"
        )
        ready = condition(unknown.obj, "Ready")
        assert ready is not None and ready["reason"] == "NodeStatusUnknown"
        nodes.wait_for(
            "the unreachable NoExecute taint",
            lambda e: _taints(e.obj).get(traces.UNREACHABLE, {}).get("effect") == "NoExecute",
        )
        nodes.wait_for("the node to be deleted", lambda e: e.type == "DELETED")
    finally:
        nodes.stop()
    # No kubelet ran a graceful stop: the pod is still there, Running, not terminating.
    live = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert live.metadata.deletion_timestamp is None
    assert live.status.phase == "Running"
    # Removing the orphan is then the pod garbage collector's business (after its 40 s
    # quarantine); spotrun must not wait for it, so this test does not either.


def test_graceful_node_shutdown(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
) -> None:
    pods_before = _start_job(core, custom, namespace)
    pod = _master(pods_before)
    node = pod.spec.node_name
    nodes = Recorder(
        api_client, core.list_node, {"field_selector": f"metadata.name={node}"}
    ).start()
    try:
        inject.interrupt(core, node, "shutdown")
        ev = nodes.wait_for(
            "Ready=False while shutting down",
            lambda e: (condition(e.obj, "Ready") or {}).get("status") == "False",
        )
        ready = condition(ev.obj, "Ready")
        assert ready is not None and ready["message"] == traces.NODE_SHUTDOWN_MESSAGE
        nodes.wait_for("the node to be deleted", lambda e: e.type == "DELETED")
    finally:
        nodes.stop()
    p = api_dict(core, core.read_namespaced_pod(pod.metadata.name, namespace))
    assert p["status"]["phase"] == "Failed"
    assert p["status"]["reason"] == "Terminated"
    assert p["status"]["message"] == traces.SHUTDOWN_MESSAGE
    cond = condition(p, "DisruptionTarget")
    assert cond is not None and cond["status"] == "True"
    assert cond["reason"] == "TerminationByKubelet"
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 143
    # The real training operator sees its master Failed (restartPolicy Never): job Failed.
    poll("PyTorchJob Failed", lambda: job_condition(custom, namespace, "job", "Failed"))


@pytest.mark.parametrize(
    ("reason", "exit_code", "container_reason"), [("exit1", 1, "Error"), ("oom", 137, "OOMKilled")]
)
def test_application_failures(
    reason: traces.FailReason,
    exit_code: int,
    container_reason: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
) -> None:
    pod = _master(_start_job(core, custom, namespace))
    inject.fail_pod(core, namespace, pod.metadata.name, reason)
    p = api_dict(core, core.read_namespaced_pod(pod.metadata.name, namespace))
    assert p["status"]["phase"] == "Failed"
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (exit_code, container_reason)
    assert condition(p, "DisruptionTarget") is None
    cond = poll("PyTorchJob Failed", lambda: job_condition(custom, namespace, "job", "Failed"))
    assert "master" in cond["message"].lower() or "failed" in cond["message"].lower()


def test_image_pull_error_stays_pending(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
) -> None:
    pod = _master(_start_job(core, custom, namespace))
    inject.fail_pod(core, namespace, pod.metadata.name, "imagepull")

    def backing_off() -> bool:
        p = core.read_namespaced_pod(pod.metadata.name, namespace)
        waiting = p.status.container_statuses[0].state.waiting
        return (
            p.status.phase == "Pending"
            and waiting is not None
            and waiting.reason == "ImagePullBackOff"
            and "spotrun/trainer:dev" in waiting.message
        )

    # kwok must not flip it back to Running: the kubelet would keep backing off.
    holds("the pod backing off on its image", backing_off, duration=3)


def test_complete_all_pods_succeeds_the_job(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
) -> None:
    pods = _start_job(core, custom, namespace, workers=1)
    for p in pods:
        inject.complete_pod(core, namespace, p.metadata.name)
    for p in pods:
        live = core.read_namespaced_pod(p.metadata.name, namespace)
        assert live.status.phase == "Succeeded"
        assert live.status.container_statuses[0].state.terminated.exit_code == 0
    poll("PyTorchJob Succeeded", lambda: job_condition(custom, namespace, "job", "Succeeded"))
