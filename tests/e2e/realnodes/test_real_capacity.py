"""A spot reclaim followed by a capacity shortage, on real kubelets with the chart's
operator pod and the real training operator: no failure is charged, the gang is never
started while the operator can see it cannot be placed, the training operator giving up
on a gang it could not complete is capacity, and the run resumes once capacity returns.

The three real spot nodes: M (the first gang's master), W (its worker) and S (spare).
NTH reclaims M (taint, cordon, drain; it stays tainted: the replacement has not joined).
Then:
1. S is cordoned, so one node fits a 2-node gang: the next attempt's PyTorchJob is not
   created (the operator's placement check), the run says it waits for capacity.
2. S is uncordoned, but a pod of another workload holds its 8 GPUs (the operator does not
   see other workloads' pods, so the check passes) and a pod on W repels the gang's master
   (required pod anti-affinity, which the scheduler honours for existing pods): attempt 2's
   worker lands on W, its master stays Pending, and the worker's trainer, which waits for
   its master itself (spotrun_trainer.master_wait; the local training operator adds no
   ``init-pytorch``), gives up after ``SPOTRUN_MASTER_WAIT_SECONDS`` (40 s here, 200 s by
   default) with EXIT_NO_MASTER: the PyTorchJob fails. That is ``IncompleteGang``: no
   failure, no preemption.
3. The GPU holder and the repeller go: the run trains again on W and S from attempt 1's
   checkpoint, with no node excluded but M (W, where attempt 2's worker ran, is healthy and
   must stay usable). The repeller goes too because with it kept the order of the
   scheduler's picks would decide the story: a next worker that took S before its master
   left the master no node (W repels it), another incomplete gang, and again each attempt
   (CI, stop 50: attempt 3 never trained in 420 s).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_api import contract
from spotrun_dev import chart_install, images, real_interrupt, real_story
from spotrun_dev.node_config import RealNode
from spotrun_dev.real_story import REAL_TOLERATIONS, TR, TRAINER_ARGS, Story
from spotrun_dev.waiting import wait_for

RUN = "short"
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")
ARGS = (*(a for a in TRAINER_ARGS if not a.startswith("--max-steps")), "--max-steps=100000")
# How long a worker waits for its master here: long enough for a master that has a node to
# start (seconds), short enough that the incomplete gang of step 2 ends in under a minute.
MASTER_WAIT = [{"name": contract.ENV_MASTER_WAIT_SECONDS, "value": "40"}]
NTH_TAINT = "aws-node-termination-handler/spot-itn"
NTH_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"


def _holder(name: str, node: str, pause: str, gpus: int, repel_master: bool) -> dict[str, Any]:
    """A pod of another workload bound to ``node``: it holds ``gpus`` GPUs, and with
    ``repel_master`` keeps the run's master pods off the node (required anti-affinity)."""
    container: dict[str, Any] = {"name": "hold", "image": pause, "imagePullPolicy": "Never"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {
        "nodeName": node,
        "tolerations": [dict(t) for t in REAL_TOLERATIONS],
        "containers": [container],
        "terminationGracePeriodSeconds": 0,
    }
    if repel_master:
        master = {"spotrun.dev/run": RUN, "training.kubeflow.org/replica-type": "master"}
        term = {"labelSelector": {"matchLabels": master}, "topologyKey": "kubernetes.io/hostname"}
        spec["affinity"] = {
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        }
    return {"metadata": {"name": name}, "spec": spec}


def _running(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    return str(core.read_namespaced_pod(name, namespace).status.phase) == "Running"


def _job(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        got = custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(got)


def _affinity(job: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(required NotIn hostnames, preferred NotIn hostnames) of the job's pods."""
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    aff = spec["affinity"]["nodeAffinity"]
    req = aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    required = [v for e in req["matchExpressions"] if e["operator"] == "NotIn" for v in e["values"]]
    prefs = aff.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    preferred = [v for p in prefs for e in p["preference"]["matchExpressions"] for v in e["values"]]
    return required, preferred


def _cordon(core: client.CoreV1Api, node: str, on: bool) -> None:
    core.patch_node(node, {"spec": {"unschedulable": on}})


def _restore(core: client.CoreV1Api, node: str) -> None:
    """Undo NTH's marks on a node whose instance was kept (later tests need it)."""
    obj = core.read_node(node)
    taints = [t for t in obj.spec.taints or [] if t.key != NTH_TAINT]
    core.patch_node(
        node,
        {
            "metadata": {"labels": {NTH_LABEL: None}},
            "spec": {"taints": taints, "unschedulable": False},
        },
    )


@pytest.mark.timeout(1500)
def test_a_reclaim_then_a_capacity_shortage_charges_no_failure(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    story = Story(api_client, namespace, len(real_nodes))
    core, custom = story.core, story.custom
    pause = built_images["pause"].ref
    body = real_story.trainer_run(RUN, built_images["trainer"].ref, "ckpt", ARGS, env=MASTER_WAIT)
    body["spec"]["maxFailures"] = 1  # one charged failure would end the run
    custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body)
    story.wait_training(RUN, 1, 15)
    by_role = {
        p.metadata.labels["training.kubeflow.org/replica-type"]: p.spec.node_name
        for p in story.pods(RUN, 1)
    }
    m, w = by_role["master"], by_role["worker"]
    s = next(n.name for n in real_nodes if n.name not in (m, w))
    try:
        _cordon(core, s, True)
        for name, node, gpus, repel in (("gpu-holder", s, 8, False), ("repeller", w, 0, True)):
            core.create_namespaced_pod(namespace, _holder(name, node, pause, gpus, repel))
            wait_for(f"{name} running", functools.partial(_running, core, namespace, name), 60)
        real_interrupt.nth_drain(core, m)
        story.wait_status(RUN, "the reclaim", lambda st: st.get("preemptions") == 1, 180)

        # 1. One node fits: attempt 2 waits, uncreated.
        st = story.wait_status(
            RUN,
            "attempt 2 waiting for capacity",
            lambda st: (
                st.get("attempt") == 2
                and any(
                    c["type"] == "CapacityAvailable"
                    and c["status"] == "False"
                    and "1 of 2 node(s) fit" in c["message"]
                    for c in st.get("conditions") or []
                )
            ),
            180,
        )
        assert _job(custom, namespace, f"{RUN}-a2") is None, st
        assert not story.pods(RUN, 2)

        # 2. S uncordoned, its GPUs held: the check passes, the master cannot be placed.
        _cordon(core, s, False)
        st = story.wait_status(
            RUN,
            "attempt 2 ended as an incomplete gang",
            lambda st: len(st.get("attempts") or []) >= 2 and st["attempts"][1].get("outcome"),
            420,
        )
        second = st["attempts"][1]
        assert (second["outcome"], second["reason"]) == ("IncompleteGang", "IncompleteGang"), st
        assert f"exit {contract.EXIT_NO_MASTER}, no master" in second["message"], second
        assert (st.get("failures", 0), st["preemptions"]) == (0, 1), st
        assert st["phase"] != "Failed", st

        # 3. Capacity returns: the run trains again, nothing charged.
        for name in ("gpu-holder", "repeller"):
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        attempt = int(
            story.wait_status(RUN, "a next attempt", lambda st: st["attempt"] > 2, 120)["attempt"]
        )
        story.wait_training(RUN, attempt, 1)  # its trainer runs (and logged its resume)
        story.wait_training(RUN, attempt, story.resumed_from(RUN, attempt) + 5)
        st = story.status(RUN)
        assert (st.get("failures", 0), st["preemptions"]) == (0, 1), st
        assert all(
            e.get("outcome") in (None, "Preempted", "IncompleteGang") for e in st["attempts"]
        )
        assert story.resumed_from(RUN, attempt) > 0  # from attempt 1's checkpoint
        job = _job(custom, namespace, f"{RUN}-a{attempt}")
        assert job is not None
        required, preferred = _affinity(job)
        assert m in required and w not in required, (required, preferred)
        assert sorted(story.gang_nodes(RUN, attempt)) == sorted([w, s])
    finally:
        for name in ("gpu-holder", "repeller"):
            with contextlib.suppress(ApiException):
                core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(*TR[:2], namespace, TR[2], RUN)
        _restore(core, m)
        _cordon(core, s, False)
