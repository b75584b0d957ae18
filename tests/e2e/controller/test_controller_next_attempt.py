"""Where and when a next attempt is created, on the kwok fleet with the real apiserver and
training operator: a node that is going away (a rebalance recommendation included) is
avoided, a job the user deleted is never created again, and every node lost before the
next attempt is in the attempt's record."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controller_helpers import (
    create,
    pods,
    running_gang,
    status,
    training_run,
    wait_status,
)
from kube_helpers import PYTORCHJOB, poll
from recorder import Recorder
from spotrun_dev import inject


def _required_not_in(custom: client.CustomObjectsApi, namespace: str, job: str) -> list[str]:
    obj = custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], job)
    tpl = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    terms = tpl["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    exprs = terms["nodeSelectorTerms"][0]["matchExpressions"]
    return [v for e in exprs if e["operator"] == "NotIn" for v in e["values"]]


def _job_exists(custom: client.CustomObjectsApi, namespace: str, job: str) -> bool:
    listed = custom.list_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2])
    return any(j["metadata"]["name"] == job for j in listed["items"])


def test_a_rebalance_recommended_node_is_avoided_by_the_next_attempt(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    """NTH's rebalance recommendation (IMDS: taint and cordon, no drain) restarts nothing,
    but when a later, unrelated interruption ends the attempt, the next attempt must not
    land on the rebalanced node: it is going away."""
    create(custom, namespace, training_run("reb"))
    gang = running_gang(core, namespace, "reb", 1)
    rebalanced, other = gang[0].spec.node_name, gang[1].spec.node_name
    inject.interrupt(core, rebalanced, "rebalance")
    inject.interrupt(core, other, "nth")
    gang2 = running_gang(core, namespace, "reb", 2, timeout=120)
    avoided = _required_not_in(custom, namespace, "reb-a2")
    assert rebalanced in avoided, avoided
    assert not {p.spec.node_name for p in gang2} & {rebalanced, other}
    st = status(custom, namespace, "reb")
    assert (st["preemptions"], st.get("failures", 0)) == (1, 0)
    assert st["attempts"][0]["reason"] == "spot-interruption"


def test_a_live_job_deleted_by_the_user_is_never_created_again(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    """``kubectl delete pytorchjob <run>-a1`` ends attempt 1 (no budget) and attempt 2
    follows; attempt 1's job is never created a second time under the same name."""
    jobs = Recorder(
        api_client,
        custom.list_namespaced_custom_object,
        {
            "group": PYTORCHJOB[0],
            "version": PYTORCHJOB[1],
            "namespace": namespace,
            "plural": PYTORCHJOB[2],
        },
    ).start()
    try:
        create(custom, namespace, training_run("deljob"))
        running_gang(core, namespace, "deljob", 1)
        wait_status(
            custom, namespace, "deljob", "attempt 1 Running", lambda s: s.get("phase") == "Running"
        )
        custom.delete_namespaced_custom_object(
            *PYTORCHJOB[:2], namespace, PYTORCHJOB[2], "deljob-a1"
        )
        running_gang(core, namespace, "deljob", 2, timeout=120)
        poll("attempt 1's pods gone", lambda: not pods(core, namespace, "deljob", 1), timeout=60)
    finally:
        jobs.stop()
    added = [e.obj["metadata"]["name"] for e in jobs.snapshot() if e.type == "ADDED"]
    assert added == ["deljob-a1", "deljob-a2"], added
    st = status(custom, namespace, "deljob")
    first = st["attempts"][0]
    assert (first["outcome"], first["reason"]) == ("Interrupted", "job-deleted"), first
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)
    assert not _job_exists(custom, namespace, "deljob-a1")


def test_a_node_lost_after_the_verdict_joins_the_attempts_record(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    """NTH on one node of the gang, then, while the next attempt waits for its backoff,
    the silent loss of the other: the attempt's record names both, each with its signal."""
    operator_factory("--backoff-base-seconds=60").start()
    create(custom, namespace, training_run("twoloss"))
    gang = running_gang(core, namespace, "twoloss", 1)
    first, second = gang[0].spec.node_name, gang[1].spec.node_name
    inject.interrupt(core, first, "nth", delete_node_after=False)
    wait_status(
        custom,
        namespace,
        "twoloss",
        "attempt 1 Preempted",
        lambda s: (s.get("attempts") or [{}])[0].get("outcome") == "Preempted",
    )
    assert status(custom, namespace, "twoloss")["attempts"][0]["interruptedNodes"] == [first]
    inject.interrupt(core, second, "loss")
    st = wait_status(
        custom,
        namespace,
        "twoloss",
        "both nodes in attempt 1's record",
        lambda s: len(s["attempts"][0].get("interruptedNodes") or []) == 2,
        timeout=60,
    )
    entry = st["attempts"][0]
    assert entry["interruptedNodes"] == sorted([first, second])
    assert sorted(entry["interruptions"], key=lambda i: i["node"]) == sorted(
        [
            {"node": first, "signal": "spot-interruption"},
            {"node": second, "signal": "node-lost"},
        ],
        key=lambda i: i["node"],
    )
    assert st.get("attempt") == 1 and st["preemptions"] == 1
