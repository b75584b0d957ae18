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
    """One node's pods as the apiserver answers for them: each pod is there for
    ``gets_until_gone`` GETs after its eviction, then 404 (its kubelet confirmed the end);
    a pod named in ``replaced`` is answered with a new UID instead (a new pod, same name)."""

    def __init__(
        self, pods: list[client.V1Pod], gets_until_gone: int, replaced: tuple[str, ...] = ()
    ) -> None:
        self.pods = {p.metadata.name: p for p in pods}
        self.gets_until_gone = gets_until_gone
        self.replaced = replaced
        self.lists = 0
        self.gets: dict[str, int] = {}
        self.evicted: list[str] = []

    def list_pod_for_all_namespaces(self, field_selector: str) -> client.V1PodList:
        assert field_selector == "spec.nodeName=n1"
        self.lists += 1
        return client.V1PodList(items=list(self.pods.values()))

    def create_namespaced_pod_eviction(self, name: str, namespace: str, body: Any) -> None:
        self.evicted.append(name)

    def read_namespaced_pod(self, name: str, namespace: str) -> client.V1Pod:
        assert name in self.evicted, "waitForDelete starts after the pod's eviction"
        self.gets[name] = self.gets.get(name, 0) + 1
        if self.gets[name] <= self.gets_until_gone:
            return self.pods[name]
        if name in self.replaced:
            return _pod(name, deleting=False, uid="uid-new")
        raise ApiException(status=404, reason="NotFound")


def _pod(name: str, deleting: bool, uid: str = "") -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, namespace="ns", uid=uid or f"uid-{name}",
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        spec=client.V1PodSpec(containers=[], termination_grace_period_seconds=60),
    )  # fmt: skip


def test_a_drain_waits_for_pods_someone_else_is_already_deleting() -> None:
    # NTH's drain helper (SkipWaitForDeleteTimeoutSeconds 0) evicts and waits for a pod
    # whose graceful deletion began before the drain: the instance must not die under it.
    node = _Node([_pod("saving", deleting=True)], 2)
    node_ops.evict_pods(node, "n1", None, timeout=30)
    assert node.evicted == ["saving"]
    assert node.gets == {"saving": 3}  # it returned only once the pod answered 404


def test_a_drain_evicts_every_pod_at_once_and_waits_for_each_by_name() -> None:
    # kubectl's waitForDelete GETs each pod by name (the first poll at once); the node's
    # pods are listed once, to find them (GetPodsForDeletion).
    node = _Node([_pod("a", deleting=False), _pod("b", deleting=False)], 0, replaced=("b",))
    node_ops.evict_pods(node, "n1", None, timeout=30)
    assert sorted(node.evicted) == ["a", "b"] and node.lists == 1
    assert node.gets == {"a": 1, "b": 1}  # b: another pod (new UID) holds the name


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
