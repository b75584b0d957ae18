"""spec.elasticity on the kwok fleet: a gang that cannot be placed for waitBeforeShrink
restarts with the nodes that fit (no budget spent), and once placeholders run on the nodes
it lacks, it makes way for a whole gang (no budget spent)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller_helpers import (
    complete_all,
    create,
    event_reasons,
    pods,
    running_gang,
    set_cordon,
    spot_nodes,
    training_run,
    wait_status,
)
from kube_helpers import PYTORCHJOB, poll
from spotrun_operator.facts.common import LABEL_SPARE_OF, SPARE_PRIORITY_CLASS


def _replicas(custom: client.CustomObjectsApi, namespace: str, job: str) -> dict[str, int]:
    obj = custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], job)
    specs = obj["spec"]["pytorchReplicaSpecs"]
    return {kind: int(r["replicas"]) for kind, r in specs.items()}


@contextlib.contextmanager
def spare_priority_class(core: client.CoreV1Api) -> Iterator[None]:
    """The PriorityClass the chart creates for spares (charts/spotrun/templates/spares.yaml:
    value -10, preemptionPolicy Never), for this test only: the chart's own tests install
    it with Helm, which refuses to adopt one made here. One a chart release left is used
    as it is, and kept."""
    sched = client.SchedulingV1Api(core.api_client)
    body = client.V1PriorityClass(
        metadata=client.V1ObjectMeta(name=SPARE_PRIORITY_CLASS),
        value=-10,
        preemption_policy="Never",
        global_default=False,
    )
    try:
        sched.create_priority_class(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        yield  # not ours
        return
    try:
        yield
    finally:
        sched.delete_priority_class(SPARE_PRIORITY_CLASS)


def _spares(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    sel = f"{LABEL_SPARE_OF}=elastic"
    return list(core.list_namespaced_pod(namespace, label_selector=sel).items)


def test_a_gang_that_does_not_fit_shrinks_then_grows_back_when_placeholders_hold_the_nodes(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    spot = spot_nodes(core)
    assert len(spot) >= 5, f"the fleet needs 5 spot nodes or more, has {spot}"
    free, others = spot[:2], spot[2:]
    set_cordon(core, others, True)
    try:
        with spare_priority_class(core):
            _shrink_and_grow_back(core, custom, namespace, free, others)
    finally:
        set_cordon(core, [n for n in others if n in spot_nodes(core)], False)


def _shrink_and_grow_back(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    free: list[str],
    others: list[str],
) -> None:
    run = training_run("elastic", nodes=4, elasticity={"minNodes": 2, "waitBeforeShrink": "10s"})
    create(custom, namespace, run)
    # Attempt 1 asks for 4 nodes; 2 fit: after 10 s unschedulable it ends, no budget spent.
    st = wait_status(
        custom,
        namespace,
        "elastic",
        "attempt 1 stopped to shrink",
        lambda s: any(e.get("outcome") == "CapacityShrink" for e in s.get("attempts") or []),
        timeout=120,
    )
    first = st["attempts"][0]
    assert (first["attempt"], first["nodes"], first["shrinkTo"]) == (1, 4, 2)
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)

    # Attempt 2 runs with the 2 nodes that fit: a PyTorchJob of 1 Master + 1 Worker, and
    # two placeholders ask for the nodes it lacks (Pending: the others are cordoned).
    gang2 = running_gang(core, namespace, "elastic", 2, n=2, timeout=120)
    assert {p.spec.node_name for p in gang2} == set(free)
    assert _replicas(custom, namespace, "elastic-a2") == {"Master": 1, "Worker": 1}
    st = wait_status(
        custom,
        namespace,
        "elastic",
        "attempt 2 Running with 2 of 4 nodes, 2 placeholders asked for",
        lambda s: s.get("attempt") == 2 and (s.get("spares") or {}).get("replicas") == 2,
    )
    assert st["phase"] == "Running" and st["attempts"][-1]["nodes"] == 2
    poll("2 placeholders Pending", lambda: len(_spares(core, namespace)) == 2, timeout=60)
    assert all(p.status.phase == "Pending" for p in _spares(core, namespace))
    assert "CapacityShrink" in event_reasons(core, namespace, "elastic")

    # Capacity returns: the placeholders run there, attempt 2 makes way for a whole one.
    set_cordon(core, others, False)
    st = wait_status(
        custom,
        namespace,
        "elastic",
        "attempt 2 grown back",
        lambda s: any(e.get("outcome") == "CapacityGrow" for e in s.get("attempts") or []),
        timeout=120,
    )
    assert st["attempts"][1]["attempt"] == 2 and st["attempts"][1]["reason"] == "CapacityReturned"
    gang3 = running_gang(core, namespace, "elastic", 3, n=4, timeout=120)
    assert _replicas(custom, namespace, "elastic-a3") == {"Master": 1, "Worker": 3}
    st = wait_status(
        custom,
        namespace,
        "elastic",
        "attempt 3 Running with every node",
        lambda s: s.get("phase") == "Running" and s.get("attempt") == 3,
    )
    assert st["attempts"][-1]["nodes"] == 4 and "shrinkTo" not in st["attempts"][-1]
    assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)
    assert "CapacityGrow" in event_reasons(core, namespace, "elastic")
    poll("attempt 2's pods gone", lambda: not pods(core, namespace, "elastic", 2), timeout=60)
    # Whole again, with no warm spares asked for: the placeholders go.
    poll("the placeholders gone", lambda: not _spares(core, namespace), timeout=60)

    complete_all(core, namespace, gang3)
    st = wait_status(
        custom, namespace, "elastic", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
    )
    assert (st["attempt"], st.get("preemptions", 0), st.get("failures", 0)) == (3, 0, 0)
