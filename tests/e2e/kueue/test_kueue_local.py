"""Kueue itself in the local cluster, no spotrun: plain PyTorchJobs labelled with a queue.

The real Kueue manager and webhooks (built from its Go module, a host process with its
webhooks on loopback) and the real training operator, on the kwok spot fleet. Each test
has its own ClusterQueue of one GPU, so it never holds more than one GPU of the fleet and
its jobs (a master asking one GPU) take turns. These pin what the operator reads from
Kueue: the Workload of a job (owner reference, ``kueue.x-k8s.io/job-uid``), its
conditions, reasons and messages when admitted, waiting for quota, preempted, readmitted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kube_helpers import PYTORCHJOB, condition, holds, job_pods, poll, pytorchjob, running_pods
from spotrun_dev import kueue

log = logging.getLogger(__name__)

KUEUE = ("kueue.x-k8s.io", "v1beta1")
QUEUE = "team"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


@pytest.fixture
def queue(
    api_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> Iterator[str]:
    """This test's ClusterQueue (one GPU) and LocalQueue ``team``; returns the former."""
    try:
        custom.get_cluster_custom_object(*KUEUE, "resourceflavors", kueue.FLAVOR)
    except ApiException as exc:  # a cluster without Kueue is a failure, never a skip
        pytest.fail(f"Kueue is not installed (ResourceFlavor {kueue.FLAVOR}: {exc.reason})")
    name = f"cq-{namespace}"[:63]
    kueue.apply(api_client, kueue.cluster_queue(name, gpus=1))
    kueue.apply(api_client, kueue.local_queue(namespace, QUEUE, name))
    yield name
    try:
        custom.delete_cluster_custom_object(*KUEUE, "clusterqueues", name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def submit(
    custom: client.CustomObjectsApi, namespace: str, name: str, **labels: str
) -> dict[str, Any]:
    """A one-GPU PyTorchJob (master only) as its author writes it: no suspend field."""
    body = pytorchjob(name, workers=0, gpus=1)
    body["metadata"]["labels"] = labels
    return dict(
        custom.create_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], body)
    )


def queued(custom: client.CustomObjectsApi, namespace: str, name: str, **labels: str) -> str:
    """Submit a job to the test's LocalQueue; returns its uid."""
    job = submit(custom, namespace, name, **{QUEUE_LABEL: QUEUE, **labels})
    return str(job["metadata"]["uid"])


def job(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], name)
    )


def suspended(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    return bool((job(custom, namespace, name)["spec"].get("runPolicy") or {}).get("suspend"))


def workload(custom: client.CustomObjectsApi, namespace: str, uid: str) -> dict[str, Any] | None:
    """The Workload of the job with this uid (Kueue labels it ``kueue.x-k8s.io/job-uid``)."""
    items = custom.list_namespaced_custom_object(
        *KUEUE, namespace, "workloads", label_selector=f"kueue.x-k8s.io/job-uid={uid}"
    )["items"]
    return dict(items[0]) if items else None


def workload_name(job_name: str, uid: str) -> str:
    """The Workload's name Kueue derives from its job (jobframework/workload_names.go):
    ``pytorchjob-<name>-`` and five hex digits of a SHA-1 of kind, group, name and uid."""
    digest = hashlib.sha1(f"PyTorchJob\nkubeflow.org\n{job_name}\n{uid}".encode()).hexdigest()
    return f"pytorchjob-{job_name}"[:247] + "-" + digest[:5]


def wait_condition(
    custom: client.CustomObjectsApi,
    namespace: str,
    uid: str,
    ctype: str,
    status: str,
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait for the job's Workload to have condition ``ctype`` at ``status``; log and
    return the Workload."""

    def reached() -> dict[str, Any] | None:
        wl = workload(custom, namespace, uid)
        cond = condition(wl, ctype) if wl else None
        return wl if cond and cond["status"] == status else None

    wl: dict[str, Any] = poll(f"Workload of {uid}: {ctype}={status}", reached, timeout=timeout)
    meta = wl["metadata"]
    log.info("workload %s %s: %s", meta["name"], meta.get("labels"), wl["status"]["conditions"])
    return wl


def test_a_labelled_pytorchjob_is_suspended_admitted_and_run_on_a_spot_node(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, queue: str
) -> None:
    created = submit(custom, namespace, "first", **{QUEUE_LABEL: QUEUE})
    # Kueue's mutating webhook suspends it before the training operator ever sees it.
    assert created["spec"]["runPolicy"]["suspend"] is True
    uid = created["metadata"]["uid"]

    wl = wait_condition(custom, namespace, uid, "Admitted", "True")
    assert wl["metadata"]["name"] == workload_name("first", uid)
    assert wl["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == uid
    owner = wl["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "PyTorchJob",
        "first",
        uid,
        True,
    )
    assert wl["spec"]["queueName"] == QUEUE
    assert (condition(wl, "QuotaReserved") or {}).get("status") == "True"
    admission = wl["status"]["admission"]
    assert admission["clusterQueue"] == queue
    assert admission["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"] == kueue.FLAVOR

    poll("the job unsuspended", lambda: not suspended(custom, namespace, "first"), timeout=30)
    (pod,) = running_pods(core, namespace, "first", 1)
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["eks.amazonaws.com/capacityType"] == "SPOT"

    # A job without the label is Kueue's business only if manageJobsWithoutQueueName.
    plain = submit(custom, namespace, "plain")
    assert not (plain["spec"].get("runPolicy") or {}).get("suspend")
    holds(
        "no Workload for the unlabelled job",
        lambda: not workload(custom, namespace, plain["metadata"]["uid"]),
        3,
    )


def test_a_job_beyond_the_quota_waits_suspended_until_the_quota_frees(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, queue: str
) -> None:
    first = queued(custom, namespace, "first")
    wait_condition(custom, namespace, first, "Admitted", "True")
    second = queued(custom, namespace, "second")

    wl = wait_condition(custom, namespace, second, "QuotaReserved", "False")
    cond = condition(wl, "QuotaReserved") or {}
    assert cond["reason"] == "Pending"
    assert "insufficient unused quota for nvidia.com/gpu in flavor spot" in cond["message"]
    holds(
        "the second job suspended and podless",
        lambda: suspended(custom, namespace, "second") and not job_pods(core, namespace, "second"),
        duration=5,
    )

    custom.delete_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], "first")
    wait_condition(custom, namespace, second, "Admitted", "True", timeout=90)
    poll("the second job unsuspended", lambda: not suspended(custom, namespace, "second"))
    running_pods(core, namespace, "second", 1)


def test_a_higher_priority_job_preempts_a_lower_one_which_is_readmitted_after(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, queue: str
) -> None:
    low = queued(custom, namespace, "low", **{PRIORITY_LABEL: "low"})
    wl = wait_condition(custom, namespace, low, "Admitted", "True")
    assert (wl["spec"]["priorityClassName"], wl["spec"]["priority"]) == ("low", 100)
    running_pods(core, namespace, "low", 1)

    high = queued(custom, namespace, "high", **{PRIORITY_LABEL: "high"})
    wl = wait_condition(custom, namespace, low, "Evicted", "True")
    evicted = condition(wl, "Evicted") or {}
    assert evicted["reason"] == "Preempted"
    assert "Preempted to accommodate a workload" in evicted["message"]
    assert (condition(wl, "Preempted") or {}).get("reason") == "InClusterQueue"
    poll("the low job suspended again", lambda: suspended(custom, namespace, "low"), timeout=30)
    poll("the low job's pods gone", lambda: not job_pods(core, namespace, "low"), timeout=150)

    wait_condition(custom, namespace, high, "Admitted", "True", timeout=90)
    running_pods(core, namespace, "high", 1)
    wl = wait_condition(custom, namespace, low, "QuotaReserved", "False")
    assert suspended(custom, namespace, "low")

    custom.delete_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], "high")
    wl = wait_condition(custom, namespace, low, "Admitted", "True", timeout=90)
    # The same Workload is readmitted; its Evicted/Preempted conditions turn False.
    evicted = condition(wl, "Evicted") or {}
    assert (evicted["status"], evicted["reason"]) == ("False", "QuotaReserved")
    assert evicted["message"].startswith("Previously: Preempted to accommodate")
    poll("the low job unsuspended", lambda: not suspended(custom, namespace, "low"))
    running_pods(core, namespace, "low", 1)
