"""spec.queueName against the real Kueue controller and webhooks (built from its Go module,
running in the local cluster) and the real training operator, on the kwok spot fleet.

Every attempt is admitted through Kueue; waiting for quota is phase Pending with Kueue's
own reason; a spot interruption of an admitted run recovers through Kueue. A Kueue
preemption is on the real nodes (tests/e2e/realnodes/test_real_kueue.py)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from controller_helpers import (
    complete_all,
    condition,
    create,
    pods,
    running_gang,
    training_run,
    wait_status,
)
from kube_helpers import PYTORCHJOB
from spotrun_dev import inject

KUEUE = ("kueue.x-k8s.io", "v1beta1")


@pytest.fixture
def queue(kueue_queue: str) -> str:
    return kueue_queue


def job_of(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], name)
    )


def suspended(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    run_policy = job_of(custom, namespace, name)["spec"].get("runPolicy") or {}
    return bool(run_policy.get("suspend"))


def workload_of(custom: client.CustomObjectsApi, namespace: str, job: str) -> dict[str, Any] | None:
    uid = job_of(custom, namespace, job)["metadata"]["uid"]
    items = custom.list_namespaced_custom_object(
        *KUEUE, namespace, "workloads", label_selector=f"kueue.x-k8s.io/job-uid={uid}"
    )["items"]
    return dict(items[0]) if items else None


def admitted(workload: dict[str, Any] | None) -> bool:
    conds = ((workload or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Admitted" and c["status"] == "True" for c in conds)


def test_a_run_waits_in_the_queue_until_quota_frees(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    queue: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("first", queueName=queue))
    first = running_gang(core, namespace, "first", 1)
    assert admitted(workload_of(custom, namespace, "first-a1"))
    st = wait_status(
        custom,
        namespace,
        "first",
        "Admitted=True",
        lambda s: condition(s, "Admitted").get("status") == "True",
    )
    assert queue in condition(st, "Admitted")["message"]

    # 16 GPUs are taken: the second run's attempt is created suspended and waits.
    create(custom, namespace, training_run("second", queueName=queue))
    st = wait_status(
        custom,
        namespace,
        "second",
        "waiting in the queue",
        lambda s: (
            condition(s, "Admitted").get("status") == "False"
            and "nvidia.com/gpu" in condition(s, "Admitted").get("message", "")
        ),
    )
    assert st["phase"] == "Pending"
    assert f"LocalQueue {queue}" in condition(st, "Admitted")["message"]
    assert suspended(custom, namespace, "second-a1") and not pods(core, namespace, "second", 1)
    assert "CapacityAvailable" not in {c["type"] for c in st.get("conditions") or []}

    # The first run finishes: Kueue admits the second, which then runs.
    complete_all(core, namespace, first)
    wait_status(custom, namespace, "first", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    running_gang(core, namespace, "second", 1, timeout=120)
    st = wait_status(
        custom, namespace, "second", "Running", lambda s: s.get("phase") == "Running", timeout=60
    )
    assert condition(st, "Admitted")["status"] == "True"
    assert (st.get("preemptions") or 0, st.get("failures") or 0) == (0, 0)


def test_a_queue_that_does_not_exist_leaves_the_run_pending_naming_it(
    custom: client.CustomObjectsApi, namespace: str, fleet: None, checkpoint_pvc: str, operator: Any
) -> None:
    create(custom, namespace, training_run("lost", queueName="no-such-queue"))
    st = wait_status(
        custom,
        namespace,
        "lost",
        "Admitted=False naming the queue",
        lambda s: "doesn't exist" in condition(s, "Admitted").get("message", ""),
    )
    assert st["phase"] == "Pending" and "no-such-queue" in condition(st, "Admitted")["message"]
    assert suspended(custom, namespace, "lost-a1")


# A Kueue preemption (QueuePreempted, no budget, nothing of the run while the other
# workload holds the quota, readmitted) runs on a real node with the real trainer saving on
# SIGTERM: tests/e2e/realnodes/test_real_kueue.py.


def test_spot_interruption_of_an_admitted_run_recovers_through_kueue(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    queue: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("spot", queueName=queue))
    gang = running_gang(core, namespace, "spot", 1)
    inject.interrupt(core, gang[1].spec.node_name, "nth")

    running_gang(core, namespace, "spot", 2, timeout=120)
    assert admitted(workload_of(custom, namespace, "spot-a2"))
    labels = job_of(custom, namespace, "spot-a2")["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == queue
    st = wait_status(
        custom, namespace, "spot", "attempt 2 Running", lambda s: s.get("phase") == "Running"
    )
    assert (st["preemptions"], st.get("failures") or 0) == (1, 0)
    assert not st.get("queuePreemptions")
    assert st["lastPreemption"]["signal"] == "spot-interruption"


def test_only_the_webhooks_of_what_kueue_manages_here_are_registered(
    api_client: client.ApiClient,
) -> None:
    """Kueue's Pod/Job/Deployment webhooks (failurePolicy Fail) would refuse every such
    object while those integrations are off: only its own API and PyTorchJob's are kept,
    each served on loopback."""
    admission = client.AdmissionregistrationV1Api(api_client)
    hooks = [
        *admission.read_mutating_webhook_configuration(
            "kueue-mutating-webhook-configuration"
        ).webhooks,
        *admission.read_validating_webhook_configuration(
            "kueue-validating-webhook-configuration"
        ).webhooks,
    ]
    resources = {r for h in hooks for rule in h.rules for r in rule.resources}
    assert {"pytorchjobs", "workloads", "clusterqueues", "resourceflavors"} <= resources
    assert not resources & {"pods", "jobs", "deployments", "statefulsets"}
    assert all(h.client_config.url.startswith("https://127.0.0.1:") for h in hooks)
