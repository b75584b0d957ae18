"""spec.elasticity on the kwok fleet: a gang that cannot be placed for waitBeforeShrink
restarts with the nodes that fit (no budget spent), and the next restart asks for every
node again."""

from __future__ import annotations

from typing import Any

from kubernetes import client

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
from spotrun_dev import inject


def _replicas(custom: client.CustomObjectsApi, namespace: str, job: str) -> dict[str, int]:
    obj = custom.get_namespaced_custom_object(*PYTORCHJOB[:2], namespace, PYTORCHJOB[2], job)
    specs = obj["spec"]["pytorchReplicaSpecs"]
    return {kind: int(r["replicas"]) for kind, r in specs.items()}


def test_a_gang_that_does_not_fit_shrinks_then_grows_back_on_the_next_restart(
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
        run = training_run(
            "elastic", nodes=4, elasticity={"minNodes": 2, "waitBeforeShrink": "10s"}
        )
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

        # Attempt 2 runs with the 2 nodes that fit: a PyTorchJob of 1 Master + 1 Worker.
        gang2 = running_gang(core, namespace, "elastic", 2, n=2, timeout=120)
        assert {p.spec.node_name for p in gang2} == set(free)
        assert _replicas(custom, namespace, "elastic-a2") == {"Master": 1, "Worker": 1}
        st = wait_status(
            custom,
            namespace,
            "elastic",
            "attempt 2 Running with 2 of 4 nodes",
            lambda s: s.get("phase") == "Running" and s.get("attempt") == 2,
        )
        assert st["attempts"][-1]["nodes"] == 2
        assert "attempt 2 running with 2 of 4 nodes" in st["message"]
        assert (st.get("preemptions", 0), st.get("failures", 0)) == (0, 0)
        assert "CapacityShrink" in event_reasons(core, namespace, "elastic")

        # Capacity returns; a spot interruption of attempt 2: attempt 3 asks for all 4 nodes.
        set_cordon(core, others, False)
        victim = gang2[0].spec.node_name
        inject.interrupt(core, victim, "nth")
        gang3 = running_gang(core, namespace, "elastic", 3, n=4, timeout=120)
        assert victim not in {p.spec.node_name for p in gang3}
        assert _replicas(custom, namespace, "elastic-a3") == {"Master": 1, "Worker": 3}
        st = wait_status(
            custom,
            namespace,
            "elastic",
            "attempt 3 Running with every node",
            lambda s: s.get("phase") == "Running" and s.get("attempt") == 3,
        )
        assert st["attempts"][-1]["nodes"] == 4 and "shrinkTo" not in st["attempts"][-1]
        assert st["attempts"][-2]["outcome"] == "Preempted"
        assert (st["preemptions"], st.get("failures", 0)) == (1, 0)
        poll("attempt 2's pods gone", lambda: not pods(core, namespace, "elastic", 2), timeout=60)

        complete_all(core, namespace, gang3)
        st = wait_status(
            custom, namespace, "elastic", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
        )
        assert (st["attempt"], st["preemptions"], st.get("failures", 0)) == (3, 1, 0)
    finally:
        set_cordon(core, [n for n in others if n in spot_nodes(core)], False)
