"""A TrainingRun from creation to Succeeded, its children, RBAC, suspend, deletion."""

from __future__ import annotations

import contextlib
import urllib.request
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller_helpers import (
    complete_all,
    condition,
    create,
    env,
    event_reasons,
    get,
    jobs,
    master,
    patch_spec,
    running_gang,
    status,
    training_run,
    wait_status,
)
from kube_helpers import PYTORCHJOB, holds, poll


def _can(
    auth: client.AuthorizationV1Api,
    namespace: str,
    sa: str,
    verb: str,
    resource: str,
    name: str,
    subresource: str = "",
) -> bool:
    review = auth.create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{sa}",
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": "spotrun.dev",
                    "resource": resource,
                    "subresource": subresource,
                    "name": name,
                },
            },
        }
    )
    return bool(review.status.allowed)


def test_happy_path_to_succeeded(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    port = 19400 + (hash(namespace) % 500)
    op = operator_factory(f"--metrics-port={port}").start()
    create(custom, namespace, training_run("happy"))
    gang = running_gang(core, namespace, "happy", 1)
    st = wait_status(
        custom, namespace, "happy", "phase Running", lambda s: s.get("phase") == "Running"
    )
    assert (st["attempt"], st["preemptions"], st["failures"]) == (1, 0, 0)
    assert condition(st, "Running")["status"] == "True"
    assert condition(st, "CapacityAvailable")["status"] == "True"

    # The gang as the training operator runs it from our PyTorchJob.
    job = custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], "happy-a1")
    run = get(custom, namespace, "happy")
    assert job["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 1
    assert specs["Master"]["restartPolicy"] == "Never"
    pod = master(gang)
    c = pod.spec.containers[0]
    assert c.resources.limits["nvidia.com/gpu"] == "8"
    assert any(t.key == "nvidia.com/gpu" for t in pod.spec.tolerations)
    assert pod.spec.termination_grace_period_seconds == 110
    assert pod.spec.service_account_name == "happy-trainer"
    assert {m.mount_path for m in c.volume_mounts} >= {"/checkpoints"}
    e = env(pod)
    assert (e["SPOTRUN_RUN"], e["SPOTRUN_NAMESPACE"], e["SPOTRUN_ATTEMPT"]) == (
        "happy",
        namespace,
        "1",
    )
    assert (e["SPOTRUN_CHECKPOINT_DIR"], e["SPOTRUN_CHECKPOINT_INTERVAL_SECONDS"]) == (
        "/checkpoints",
        "300",
    )
    assert {
        n.metadata.labels["eks.amazonaws.com/capacityType"]
        for n in (core.read_node(p.spec.node_name) for p in gang)
    } == {"SPOT"}

    # The trainer may get/patch the status of its own run, and nothing else.
    auth = client.AuthorizationV1Api(api_client)
    assert _can(auth, namespace, "happy-trainer", "patch", "trainingruns", "happy", "status")
    assert _can(auth, namespace, "happy-trainer", "get", "trainingruns", "happy", "status")
    assert not _can(auth, namespace, "happy-trainer", "patch", "trainingruns", "other", "status")
    assert not _can(auth, namespace, "happy-trainer", "patch", "trainingruns", "happy")
    assert not _can(auth, namespace, "happy-trainer", "delete", "trainingruns", "happy")

    # That the operator keeps out of status.progress is shown by the real trainer on real
    # nodes (tests/e2e/realnodes): the story waits on the progress it reports through every
    # status write of the operator. Pods on kwok nodes run nothing that could report it.
    complete_all(core, namespace, gang)
    st = wait_status(
        custom, namespace, "happy", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
    )
    assert condition(st, "Succeeded")["status"] == "True"
    assert st["completionTime"] and "progress" not in st
    assert (st["attempt"], st["preemptions"], st["failures"]) == (1, 0, 0)
    holds("no other attempt", lambda: jobs(custom, namespace, "happy") == ["happy-a1"], 2)
    reasons = event_reasons(core, namespace, "happy")
    assert reasons[0] == "AttemptCreated" and "AttemptRunning" in reasons
    assert reasons[-1] == "Succeeded"
    # kopf only watches: no finalizer, no annotations of its own, nothing in status.
    meta = get(custom, namespace, "happy")["metadata"]
    assert not meta.get("finalizers")
    assert not [a for a in meta.get("annotations") or {} if "kopf" in a]
    assert not any(k.startswith("kopf") for k in st)
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'spotrun_runs{phase="Succeeded"} 1.0' in scrape
    assert "spotrun_reconcile_duration_seconds_count" in scrape
    assert op.alive()


def test_deleting_the_run_removes_every_child(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    api_client: client.ApiClient,
    namespace: str,
    fleet: None,
    operator: Any,
) -> None:
    # A new PVC (size): the local cluster has no provisioner, so the pods stay Pending,
    # which is fine here: every child exists.
    body = training_run("gc", checkpoint={"volume": {"size": "1Gi", "storageClassName": "x"}})
    create(custom, namespace, body)
    rbac = client.RbacAuthorizationV1Api(api_client)

    def children() -> dict[str, list[str]]:
        return {
            "jobs": jobs(custom, namespace, "gc"),
            "pods": [
                p.metadata.name
                for p in core.list_namespaced_pod(
                    namespace, label_selector="spotrun.dev/run=gc"
                ).items
            ],
            "pvcs": [
                p.metadata.name
                for p in core.list_namespaced_persistent_volume_claim(namespace).items
            ],
            "sas": [
                s.metadata.name
                for s in core.list_namespaced_service_account(namespace).items
                if s.metadata.name == "gc-trainer"
            ],
            "roles": [r.metadata.name for r in rbac.list_namespaced_role(namespace).items],
            "bindings": [
                b.metadata.name for b in rbac.list_namespaced_role_binding(namespace).items
            ],
        }

    poll("every child", lambda: all(children().values()), timeout=60)
    pvc = core.read_namespaced_persistent_volume_claim("gc-checkpoints", namespace)
    assert pvc.spec.access_modes == ["ReadWriteMany"]
    assert pvc.metadata.owner_references[0].kind == "TrainingRun"
    custom.delete_namespaced_custom_object(
        "spotrun.dev", "v1alpha1", namespace, "trainingruns", "gc"
    )
    poll(
        "the garbage collector to remove every child",
        lambda: not any(children().values()),
        timeout=90,
    )


def test_suspend_then_resume(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("pause"))
    running_gang(core, namespace, "pause", 1)
    patch_spec(custom, namespace, "pause", {"suspend": True})
    st = wait_status(
        custom, namespace, "pause", "phase Suspended", lambda s: s.get("phase") == "Suspended"
    )
    assert condition(st, "Suspended")["status"] == "True"
    poll("attempt 1 gone", lambda: jobs(custom, namespace, "pause") == [], timeout=30)
    patch_spec(custom, namespace, "pause", {"suspend": False})
    gang = running_gang(core, namespace, "pause", 2)
    assert env(master(gang))["SPOTRUN_ATTEMPT"] == "2"
    st = status(custom, namespace, "pause")
    assert (st["preemptions"], st["failures"]) == (0, 0)
    assert "Suspending" in event_reasons(core, namespace, "pause")


def test_on_demand_fallback_then_back_to_spot(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    from controller_helpers import set_cordon, spot_nodes

    spot = spot_nodes(core)
    set_cordon(core, spot, True)
    try:
        create(
            custom,
            namespace,
            training_run("fb", capacity={"type": "spot", "onDemandFallbackAfter": "5s"}),
        )
        st = wait_status(
            custom,
            namespace,
            "fb",
            "CapacityAvailable=False",
            lambda s: condition(s, "CapacityAvailable").get("status") == "False",
        )
        assert (
            "nvidia.com/gpu" in condition(st, "CapacityAvailable")["message"]
            or "node(s)" in condition(st, "CapacityAvailable")["message"]
        )
        gang = running_gang(core, namespace, "fb", 2, timeout=60)
        nodes = {
            core.read_node(p.spec.node_name).metadata.labels["karpenter.sh/capacity-type"]
            for p in gang
        }
        assert nodes == {"on-demand"}
        st = wait_status(
            custom,
            namespace,
            "fb",
            "attempt 2 Running",
            lambda s: s.get("phase") == "Running" and s["attempt"] == 2,
        )
        assert st["attempts"][0]["outcome"] == "CapacityFallback"
        assert (st["preemptions"], st["failures"]) == (0, 0)
        assert condition(st, "CapacityAvailable")["status"] == "True"
        set_cordon(core, spot, False)
        # The on-demand attempt is lost (a node goes away): the next one tries spot again.
        from spotrun_dev import inject

        inject.interrupt(core, master(gang).spec.node_name, "loss")
        gang = running_gang(core, namespace, "fb", 3, timeout=90)
        labels = {
            core.read_node(p.spec.node_name).metadata.labels["karpenter.sh/capacity-type"]
            for p in gang
        }
        assert labels == {"spot"}
    finally:
        with contextlib.suppress(ApiException):
            set_cordon(core, spot_nodes(core), False)
