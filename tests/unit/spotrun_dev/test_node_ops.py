"""node_ops: the API calls the injected components make, in their own way."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import node_ops


class _Core:
    """Records Event creates; refuses them like an apiserver refuses a namespace being
    deleted (403) when ``refuse`` is set."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.created: list[tuple[str, Any]] = []

    def create_namespaced_event(self, namespace: str, body: Any) -> None:
        if self.refuse:
            raise ApiException(status=403, reason="Forbidden")
        self.created.append((namespace, body))


def _record(core: _Core) -> None:
    pod = client.V1ObjectReference(kind="Pod", name="p", namespace="gone")
    event = {"reason": "PodEviction", "message": "evicting", "type": "Normal"}
    node_ops.record_event(core, pod, event, "aws-node-termination-handler", "n1")


def test_an_event_is_posted_in_the_objects_namespace_with_a_recorder_name() -> None:
    core = _Core(refuse=False)
    _record(core)
    [(namespace, body)] = core.created
    assert namespace == "gone" and body.metadata.name.startswith("p.")
    assert (body.reason, body.count, body.source.component) == (
        "PodEviction",
        1,
        "aws-node-termination-handler",
    )


def test_a_refused_event_never_fails_the_component() -> None:
    # client-go's recorder drops an event the apiserver refuses; the drain goes on.
    core = _Core(refuse=True)
    _record(core)
    assert core.created == []


class _Node:
    """One node's pods as the apiserver lists them: listed ``lists_until_gone`` times,
    then gone (their kubelet confirmed the end)."""

    def __init__(self, pods: list[client.V1Pod], lists_until_gone: int) -> None:
        self.pods = pods
        self.lists_until_gone = lists_until_gone
        self.lists = 0
        self.evicted: list[str] = []

    def list_pod_for_all_namespaces(self, field_selector: str) -> client.V1PodList:
        assert field_selector == "spec.nodeName=n1"
        self.lists += 1
        gone = self.lists > self.lists_until_gone
        return client.V1PodList(items=[] if gone else list(self.pods))

    def create_namespaced_pod_eviction(self, name: str, namespace: str, body: Any) -> None:
        self.evicted.append(name)


def _pod(name: str, deleting: bool) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, namespace="ns", uid=f"uid-{name}",
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        spec=client.V1PodSpec(containers=[], termination_grace_period_seconds=60),
    )  # fmt: skip


def test_a_drain_waits_for_pods_someone_else_is_already_deleting() -> None:
    # NTH's drain helper (SkipWaitForDeleteTimeoutSeconds 0) evicts and waits for a pod
    # whose graceful deletion began before the drain: the instance must not die under it.
    node = _Node([_pod("saving", deleting=True)], 3)
    node_ops.evict_pods(node, "n1", None, timeout=30)
    assert node.evicted == ["saving"]
    assert node.lists > 3  # it returned only once the node listed no pod


def test_a_drain_evicts_every_pod_at_once() -> None:
    node = _Node([_pod("a", deleting=False), _pod("b", deleting=False)], 1)
    node_ops.evict_pods(node, "n1", None, timeout=30)
    assert sorted(node.evicted) == ["a", "b"] and node.lists == 2


class _PodStatusCore:
    """Answers a pod's patches with ``status`` (200: recorded) like the apiserver."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.patched: list[tuple[str, Any]] = []

    def _answer(self, name: str, body: Any) -> None:
        if self.status != 200:
            raise ApiException(status=self.status)
        self.patched.append((name, body))

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any) -> None:
        self._answer(name, body)

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: Any) -> None:
        self._answer(name, body)


def _stopped(core: _PodStatusCore) -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="w0", namespace="ns"))
    node_ops.set_pod_status(core, pod, "terminated", {"phase": "Failed"})


def test_the_kubelet_reports_a_stopped_pods_status_after_marking_it() -> None:
    core = _PodStatusCore(200)
    _stopped(core)
    assert [body for _, body in core.patched][1] == {"status": {"phase": "Failed"}}
    assert "spotrun.dev/simulated" in core.patched[0][1]["metadata"]["annotations"]


def test_a_pod_deleted_meanwhile_has_no_status_to_report_but_other_errors_surface() -> None:
    # The kubelet's status manager skips a pod the apiserver no longer has (syncPod).
    _stopped(_PodStatusCore(404))
    try:
        _stopped(_PodStatusCore(500))
    except ApiException as exc:
        assert exc.status == 500
    else:
        raise AssertionError("a 500 must not be swallowed")
