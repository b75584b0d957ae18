"""Every injection leaves, on a real apiserver, the writes the real component makes.

Each case injects one signal into a private kwok node of the shared local cluster (real
kube-apiserver, kube-controller-manager with its node lifecycle, taint-eviction and pod
garbage collection controllers), records the apiserver's watch events for the node and its
pod, and compares them, in order, with the fixture transcribed from the real component's
source (tests/fixtures/signals/*.yaml): never with spotrun-dev's own constants.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
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
from recorder import Recorder
from spotrun_dev import fleet as fleet_nodes
from spotrun_dev import inject, plans, plans_k8s, trace_match, traces

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "signals"
FIXTURE_FILES = sorted(p for p in FIXTURES.glob("*.yaml") if not p.name.startswith("_"))
OWNER = "spotrun.dev/e2e-owner"
# Writes that leave nothing a watch can see: the eviction request itself (its effects on
# the pod are the apiserver's observed writes) and the instance's death (no API call).
UNSEEN = ("evicted", "drained_by", "kubelet_stops")


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


def api_dict(core: client.CoreV1Api, obj: Any) -> dict[str, Any]:
    return dict(core.api_client.sanitize_for_serialization(obj))


@pytest.fixture
def private_node(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    """A kwok spot node only this test's pods tolerate, outside the shared fleet (other
    sessions' tests never land on it, and `ensure_fleet` never touches it)."""
    name = f"sig-{uuid.uuid4().hex[:10]}"
    body = fleet_nodes.build_node(name, "spot", "us-east-1a", "us-east-1")
    del body["metadata"]["labels"][fleet_nodes.FLEET_LABEL]
    body["metadata"]["labels"][OWNER] = namespace
    body["spec"]["taints"].append({"key": OWNER, "value": namespace, "effect": "NoSchedule"})
    core.create_node(body)

    def ready() -> bool:
        # Ready, and the node lifecycle controller's not-ready taint gone too: it lifts it a
        # moment after Ready, and a test that snapshots the node must not race it.
        n = core.read_node(name)
        tainted = any(t.key == "node.kubernetes.io/not-ready" for t in n.spec.taints or [])
        up = any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        return up and not tainted

    poll(f"node {name} Ready and untainted", ready, timeout=60)
    yield name
    try:
        core.patch_node(name, [{"op": "replace", "path": "/metadata/finalizers", "value": []}])
        core.delete_node(name, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status not in (404, 422):
            raise
    try:
        client.CoordinationV1Api(core.api_client).delete_namespaced_lease(name, "kube-node-lease")
    except ApiException as exc:
        if exc.status != 404:
            raise
    selector = f"involvedObject.name={name}"
    core.delete_collection_namespaced_event("default", field_selector=selector)


def _pod_on(
    core: client.CoreV1Api, namespace: str, node: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A trainer-like pod bound to ``node`` (110 s grace, like spotrun's), Running."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer", "annotations": annotations or {}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 110,
            "tolerations": [
                {"key": OWNER, "operator": "Exists", "effect": "NoSchedule"},
                {"key": fleet_nodes.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
            ],
            "containers": [{"name": "pytorch", "image": "spotrun/trainer:dev"}],
        },
    }
    core.create_namespaced_pod(namespace, body)
    poll(
        "the pod Running",
        lambda: core.read_namespaced_pod("trainer", namespace).status.phase == "Running",
    )
    return api_dict(core, core.read_namespaced_pod("trainer", namespace))


def _event_recorder(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str, name: str
) -> Recorder:
    """Kubernetes Events about one object (a Node's live in namespace default)."""
    sel = {"namespace": namespace, "field_selector": f"involvedObject.name={name}"}
    return Recorder(api_client, core.list_namespaced_event, sel).start()


def _seen(writes: list[dict[str, Any]], objects: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        w
        for w in writes
        if w["object"] in objects
        and not any(k in c for c in w["changes"] for k in UNSEEN)
        and not w.get("kwok_cannot")
    ]


def _events(rec: Recorder, initial: dict[str, Any], kind: str) -> list[list[dict[str, Any]]]:
    uid = initial["metadata"]["uid"]
    evs = [(e.type, e.obj) for e in rec.snapshot() if e.obj["metadata"].get("uid") == uid]
    return trace_match.changes_per_event(initial, evs, kind)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_injected_trace_matches_the_real_component(
    path: Path,
    core: client.CoreV1Api,
    api_client: client.ApiClient,
    namespace: str,
    private_node: str,
) -> None:
    fixture = trace_match.load_fixture(path)
    signal = fixture["signal"]
    inject.prepare_node(core, private_node, signal)  # what the node carried beforehand
    pod = _pod_on(core, namespace, private_node)
    node = api_dict(core, core.read_node(private_node))
    node_writes = _seen(fixture["writes"], ("node",))
    pod_writes = _seen(fixture["writes"], ("pod", "pods"))
    event_writes = {kind: _seen(fixture["writes"], (kind,)) for kind in ("event", "pod-event")}
    sel = {"field_selector": f"metadata.name={private_node}"}
    nodes = Recorder(api_client, core.list_node, sel).start()
    pods = Recorder(api_client, core.list_namespaced_pod, {"namespace": namespace}).start()
    events = {
        "event": _event_recorder(api_client, core, "default", private_node),
        "pod-event": _event_recorder(api_client, core, namespace, "trainer"),
    }
    given = fixture.get("options") or {}
    opts = plans.Options(
        mode=given.get("mode", "imds"),
        termination_grace_period=given.get("termination_grace_period"),
    )
    # ``on_start`` (a benchmark's signal time) comes after the injector's preparation and
    # before the component's first write: the node is still as it was prepared.
    at_start: list[dict[str, Any]] = []
    try:
        inject.interrupt(
            core,
            private_node,
            signal,
            drain_timeout=60,
            instance_dies_after=0,
            opts=opts,
            on_start=lambda: at_start.append(api_dict(core, core.read_node(private_node))),
        )
        assert [n["spec"] for n in at_start] == [node["spec"]]
        assert at_start[0]["metadata"].get("finalizers") == node["metadata"].get("finalizers")

        def problems() -> list[str]:
            found = trace_match.order_mismatches(node_writes, _events(nodes, node, "node"))
            found += trace_match.order_mismatches(pod_writes, _events(pods, pod, "pod"))
            for kind, rec in events.items():
                seen = trace_match.event_changes([(e.type, e.obj) for e in rec.snapshot()])
                found += trace_match.order_mismatches(event_writes[kind], seen)
            return found

        def matched() -> bool:
            return not problems()

        try:
            poll(f"the {signal} trace", matched, timeout=90, interval=0.5)
        except AssertionError:
            seen = {"node": _events(nodes, node, "node"), "pod": _events(pods, pod, "pod")}
            pytest.fail(f"{path.name}: {problems()}; watch saw {seen}", pytrace=False)
        # Nothing more than the component writes: no cordon Karpenter never makes, no
        # taint NTH's state-change path never adds.
        assert trace_match.unclaimed(node_writes, _events(nodes, node, "node")) == []
        if not pod_writes:
            # Advice only (an IMDS rebalance recommendation): the pod keeps running.
            def untouched() -> bool:
                p = core.read_namespaced_pod("trainer", namespace)
                return p.status.phase == "Running" and p.metadata.deletion_timestamp is None

            holds("the pod still running", untouched, duration=3)
    finally:
        for rec in (nodes, pods, *events.values()):
            rec.stop()


def test_nth_waits_for_the_real_node_lifecycle_controller(
    core: client.CoreV1Api,
    api_client: client.ApiClient,
    namespace: str,
    private_node: str,
) -> None:
    """With the real timing, the NotReady conditions and unreachable taints come from
    kube-controller-manager itself after its node-monitor-grace-period."""
    fixture = trace_match.load_fixture(FIXTURES / "nth.yaml")
    _pod_on(core, namespace, private_node)
    node = api_dict(core, core.read_node(private_node))
    sel = {"field_selector": f"metadata.name={private_node}"}
    nodes = Recorder(api_client, core.list_node, sel).start()
    try:
        done = inject.interrupt(
            core,
            private_node,
            "nth",
            drain_timeout=60,
            instance_dies_after=0,
            opts=plans.Options(play_node_lifecycle=False),
        )
        assert inject.NODE_LIFECYCLE in {w.actor for w in done}
        writes = _seen(fixture["writes"], ("node",))
        poll(
            "the nth trace with the real node lifecycle controller",
            lambda: not trace_match.order_mismatches(writes, _events(nodes, node, "node")),
            timeout=30,
        )
        ready = [
            e.obj
            for e in nodes.snapshot()
            if (condition(e.obj, "Ready") or {}).get("status") == "Unknown"
        ]
        # The Unknown condition the real controller wrote keeps the kubelet's last heartbeat.
        cond = condition(ready[0], "Ready")
        assert cond is not None and cond["lastHeartbeatTime"] < cond["lastTransitionTime"]
    finally:
        nodes.stop()


@pytest.mark.parametrize(
    ("signal", "annotation"),
    [
        ("karpenter-drift", {plans_k8s.KARPENTER_DO_NOT_DISRUPT: "true"}),
        ("ca-scale-down", {plans_k8s.CA_SAFE_TO_EVICT: "false"}),
    ],
)
def test_voluntary_disruptions_respect_the_opt_out(
    signal: traces.Signal,
    annotation: dict[str, str],
    core: client.CoreV1Api,
    namespace: str,
    private_node: str,
) -> None:
    """Karpenter never picks a node with a do-not-disrupt pod for drift or consolidation;
    Cluster Autoscaler never scales down a node with a safe-to-evict=false pod."""
    _pod_on(core, namespace, private_node, annotation)
    before = core.read_node(private_node).metadata.resource_version
    assert inject.interrupt(core, private_node, signal, instance_dies_after=0) == []
    node = core.read_node(private_node)
    assert node.metadata.resource_version == before
    assert not node.spec.unschedulable
    assert traces.SIGNAL_TAINT[signal] not in {t.key for t in node.spec.taints or []}
    assert core.read_namespaced_pod("trainer", namespace).status.phase == "Running"


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
