"""Every EKS interruption signal, injected the way the real component does it, costs
exactly one preemption and resumes in the next attempt; operator crashes change nothing."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any

import pytest
from kubernetes import client

from controller_helpers import (
    SIGNAL_OF,
    complete_all,
    condition,
    create,
    env,
    event_reasons,
    hold_gpus,
    jobs,
    master,
    pods,
    running_gang,
    spot_nodes,
    status,
    training_run,
    wait_status,
)
from kube_helpers import holds, poll
from spotrun_dev import inject, traces


def _one_live_attempt(
    custom: client.CustomObjectsApi, namespace: str, run: str, attempt: int
) -> bool:
    st = status(custom, namespace, run)
    return bool(
        jobs(custom, namespace, run) == [f"{run}-a{attempt}"] and st.get("attempt") == attempt
    )


# NTH and the kubelet's graceful shutdown run end to end on real nodes (the real operator
# pod, the real trainer, real SIGTERMs: tests/e2e/realnodes/test_real_training.py), so only
# the signals the real nodes cannot give, and the silent loss the real trainer now names
# itself (peer-lost), run here.
@pytest.mark.parametrize(
    "signal",
    ["karpenter", "asg", "loss"],
)
def test_interruption_is_one_preemption_then_resume(
    signal: traces.Signal,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("spot"))
    gang = running_gang(core, namespace, "spot", 1)
    victim = gang[1].spec.node_name
    zone = core.read_node(victim).metadata.labels["topology.kubernetes.io/zone"]
    inject.interrupt(core, victim, signal)

    gang2 = running_gang(core, namespace, "spot", 2)
    assert env(master(gang2))["SPOTRUN_ATTEMPT"] == "2"
    assert victim not in {p.spec.node_name for p in gang2}
    st = wait_status(
        custom,
        namespace,
        "spot",
        "attempt 2 Running",
        lambda s: s.get("phase") == "Running" and s["attempt"] == 2,
    )
    assert (st["preemptions"], st["failures"]) == (1, 0)
    last = st["lastPreemption"]
    assert (last["signal"], last["node"], last["zone"], last["attempt"]) == (
        SIGNAL_OF[signal],
        victim,
        zone,
        1,
    )
    assert st["attempts"][0]["outcome"] == "Preempted"
    assert jobs(custom, namespace, "spot") == ["spot-a2"]

    complete_all(core, namespace, gang2)
    st = wait_status(
        custom, namespace, "spot", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
    )
    assert (st["attempt"], st["preemptions"], st["failures"]) == (2, 1, 0)
    reasons = event_reasons(core, namespace, "spot")
    # One event per recovery: Preempted names attempt 2, which announces nothing itself
    # (attempt 1 may be interrupted before the operator saw it Running: at most one).
    assert reasons.count("Preempted") == 1
    assert reasons.count("AttemptCreated") == 1 and reasons.count("AttemptRunning") <= 1


def test_rebalance_recommendation_alone_does_not_restart(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("rebal"))
    gang = running_gang(core, namespace, "rebal", 1)
    inject.interrupt(core, gang[0].spec.node_name, "rebalance")
    poll(
        "the RebalanceRecommendation event",
        lambda: "RebalanceRecommendation" in event_reasons(core, namespace, "rebal"),
        timeout=30,
    )
    holds(
        "attempt 1 keeps running",
        lambda: (
            _one_live_attempt(custom, namespace, "rebal", 1)
            and status(custom, namespace, "rebal").get("phase") == "Running"
            and len(pods(core, namespace, "rebal", 1)) == 2
        ),
        duration=4,
    )
    assert status(custom, namespace, "rebal")["preemptions"] == 0


def test_two_nodes_of_a_gang_interrupted_a_second_apart_is_one_recovery(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    # Production backoff starts at 10 s; 3 s here still covers the second notice.
    operator_factory("--backoff-base-seconds=3").start()
    create(custom, namespace, training_run("pair"))
    gang = running_gang(core, namespace, "pair", 1)
    first = threading.Thread(target=inject.interrupt, args=(core, gang[0].spec.node_name, "nth"))
    first.start()
    time.sleep(1)  # the scenario itself: the second notice one second later
    inject.interrupt(core, gang[1].spec.node_name, "karpenter")
    first.join(60)
    running_gang(core, namespace, "pair", 2)
    holds(
        "one recovery: attempt 2 is the only attempt, one preemption",
        lambda: (
            _one_live_attempt(custom, namespace, "pair", 2)
            and status(custom, namespace, "pair")["preemptions"] == 1
        ),
        duration=4,
    )
    st = status(custom, namespace, "pair")
    assert st["lastPreemption"]["signal"] == "spot-interruption"
    assert event_reasons(core, namespace, "pair").count("Preempted") == 1


def test_interruption_while_the_next_attempt_is_still_pending(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    create(custom, namespace, training_run("pend"))
    gang = running_gang(core, namespace, "pend", 1)
    a, b = (p.spec.node_name for p in gang)
    others = [n for n in spot_nodes(core) if n not in (a, b)]
    # Another workload holds every other node's GPUs: attempt 2's gang passes the
    # operator's placement check (the nodes fit by all it sees) but half of it stays Pending.
    holders = hold_gpus(core, namespace, others)
    try:
        inject.interrupt(core, a, "nth")
        # Attempt 2 gets node b and waits for a second spot node.
        st = wait_status(
            custom,
            namespace,
            "pend",
            "attempt 2 waiting for capacity",
            lambda s: (
                s.get("attempt") == 2 and condition(s, "CapacityAvailable").get("status") == "False"
            ),
        )
        assert st["phase"] == "Recovering"
        placed = poll(
            "attempt 2's pod on node b",
            lambda: [p for p in pods(core, namespace, "pend", 2) if p.spec.node_name == b],
            timeout=30,
        )
        assert placed
        inject.interrupt(core, b, "nth")
        st = wait_status(custom, namespace, "pend", "attempt 3", lambda s: s.get("attempt") == 3)
        assert (st["preemptions"], st["failures"]) == (2, 0)
        assert st["attempts"][1]["outcome"] == "Preempted"
        assert st["lastPreemption"]["node"] == b
        for name in holders:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        gang3 = running_gang(core, namespace, "pend", 3)
        complete_all(core, namespace, gang3)
        st = wait_status(
            custom, namespace, "pend", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
        )
        assert (st["attempt"], st["preemptions"], st["failures"]) == (3, 2, 0)
    finally:
        for name in holders:
            with contextlib.suppress(client.ApiException):
                core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_operator_killed_mid_recovery_keeps_one_attempt_and_exact_counts(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    op = operator_factory("--backoff-base-seconds=2").start()
    create(custom, namespace, training_run("crash"))
    gang = running_gang(core, namespace, "crash", 1)
    inject.interrupt(core, gang[0].spec.node_name, "karpenter")
    wait_status(
        custom,
        namespace,
        "crash",
        "the preemption recorded",
        lambda s: s.get("preemptions") == 1,
        timeout=30,
    )
    # SIGKILL again and again while the recovery goes on: every restart must resume the
    # recovery from what the cluster shows, never count or create twice.
    rng = random.Random(7)
    for _ in range(5):
        op.kill()
        op.start()
        time.sleep(rng.uniform(0.3, 2.5))
    # Left running now, it must finish the recovery it found, exactly once.
    gang2 = running_gang(core, namespace, "crash", 2)
    st = wait_status(
        custom,
        namespace,
        "crash",
        "attempt 2 Running",
        lambda s: s.get("phase") == "Running" and s["attempt"] == 2,
    )
    assert (st["preemptions"], st["failures"]) == (1, 0)
    # A node of attempt 2 is reclaimed while nobody watches: its pods are evicted and the
    # training operator replaces them; the restarted operator still sees one preemption.
    op.kill()
    inject.interrupt(core, gang2[0].spec.node_name, "nth")
    op.start()
    running_gang(core, namespace, "crash", 3)
    holds(
        "exactly one live attempt and exact counters",
        lambda: (
            _one_live_attempt(custom, namespace, "crash", 3)
            and status(custom, namespace, "crash")["preemptions"] == 2
            and status(custom, namespace, "crash")["failures"] == 0
        ),
        duration=4,
    )
