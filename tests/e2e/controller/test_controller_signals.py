"""Every other interruption path spotrun-dev injects (the fixtures in tests/fixtures/signals,
transcribed from the real components' source), through the real operator, apiserver,
controller-manager and training operator: the right reason, the right budget (one
preemption, no failure), one recovery, and a run that ends Succeeded.

The five EKS paths the product is built around are in test_controller_preemption.py; a
rebalance recommendation in NTH's IMDS mode (no restart) is there too.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from kubernetes import client

from controller_helpers import (
    complete_all,
    create,
    event_reasons,
    jobs,
    running_gang,
    status,
    training_run,
    wait_status,
)
from kube_helpers import holds, poll
from spotrun_dev import inject, traces
from spotrun_dev.plans import Mode, Options

# (signal, NTH mode, the reason the operator must give). Reasons: docs/signals.md.
PATHS: list[tuple[traces.Signal, Mode, str]] = [
    ("rebalance", "queue", "rebalance-recommendation"),  # queue mode drains
    ("scheduled-maintenance", "imds", "scheduled-maintenance"),
    ("state-change", "queue", "instance-state-change"),
    ("mng-rebalance", "imds", "mng-rebalance"),
    ("karpenter-drift", "imds", "karpenter-disruption"),
    ("ca-scale-down", "imds", "ca-scale-down"),
    ("out-of-service", "imds", "out-of-service"),
    ("gke-preempt", "imds", "gke-preemption"),
    ("aks-evict", "imds", "aks-spot-eviction"),
    ("node-pressure", "imds", "node-pressure"),
    ("critical-preemption", "imds", "kubelet-preemption"),
]
# Voluntary disruptions leave protected pods alone (spec.protectFromVoluntaryDisruption,
# test_injected_signals.py::test_voluntary_disruptions_respect_the_opt_out): these runs
# opt out so that the drain happens.
VOLUNTARY = {"karpenter-drift", "ca-scale-down"}


@pytest.mark.parametrize(("signal", "mode", "reason"), PATHS, ids=[f"{s}-{m}" for s, m, _ in PATHS])
def test_every_path_is_one_preemption_with_its_reason_then_success(
    signal: traces.Signal,
    mode: Mode,
    reason: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator: Any,
) -> None:
    spec: dict[str, Any] = {}
    if signal in VOLUNTARY:
        spec["protectFromVoluntaryDisruption"] = False
    create(custom, namespace, training_run("spot", **spec))
    gang = running_gang(core, namespace, "spot", 1)
    victim = gang[1].spec.node_name
    writes = inject.interrupt(core, victim, signal, opts=Options(mode=mode))
    assert writes, f"{signal} made no write on {victim}"

    gang2 = running_gang(core, namespace, "spot", 2, timeout=120)
    st = wait_status(
        custom,
        namespace,
        "spot",
        "attempt 2 Running",
        lambda s: s.get("phase") == "Running" and s["attempt"] == 2,
    )
    first = st["attempts"][0]
    assert (first["outcome"], first["reason"]) == ("Preempted", reason), first
    assert (st["preemptions"], st["failures"]) == (1, 0)
    last = st["lastPreemption"]
    assert (last["signal"], last["node"], last["attempt"]) == (reason, victim, 1)
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


# What befalls each attempt of the chaos run, in order: node interruptions of four kinds and
# two application crashes; four interrupted nodes stay within what the 8-node fleet can
# avoid (the next attempt keeps off nodes interrupted in the last hour).
SERIES: list[str] = ["nth", "exit1", "karpenter", "shutdown", "exit1", "critical-preemption"]


def test_operator_sigkilled_through_mixed_interruptions_counts_exactly_what_happened(
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    fleet: None,
    checkpoint_pvc: str,
    operator_factory: Any,
) -> None:
    """SIGKILL right after each attempt is created and again at a random moment of each
    recovery: the counters end exactly equal to what was injected, one attempt per loss."""
    op = operator_factory("--backoff-base-seconds=1").start()
    create(custom, namespace, training_run("chaos", maxFailures=3, maxPreemptions=10))
    rng = random.Random(23)
    for n, what in enumerate(SERIES, start=1):
        gang = running_gang(core, namespace, "chaos", n, timeout=120)
        # The operator has seen this gang (its pod UIDs are recorded): a pod evicted and
        # recreated by the training operator while no operator ever saw the first one is
        # indistinguishable from the original, so no test can expect it counted.
        wait_status(
            custom, namespace, "chaos", f"attempt {n} Running",
            lambda s, n=n: s.get("attempt") == n and s.get("phase") == "Running",
        )  # fmt: skip
        if what == "exit1":
            inject.fail_pod(core, namespace, gang[rng.randrange(2)].metadata.name, "exit1")
        else:
            inject.interrupt(core, gang[rng.randrange(2)].spec.node_name, what)
        time.sleep(rng.uniform(0.0, 2.0))
        op.kill()  # somewhere in the recovery: deciding, stopping, or backing off
        op.start()
        poll(
            f"attempt {n + 1} created",
            lambda n=n: f"chaos-a{n + 1}" in jobs(custom, namespace, "chaos"),
            timeout=120,
        )
        op.kill()  # right after it created the attempt, before it saw the pods
        op.start()

    last = running_gang(core, namespace, "chaos", len(SERIES) + 1, timeout=120)
    preempted = len([w for w in SERIES if w != "exit1"])
    failed = len(SERIES) - preempted
    holds(
        "one live attempt and exact counters",
        lambda: (
            jobs(custom, namespace, "chaos") == [f"chaos-a{len(SERIES) + 1}"]
            and (st := status(custom, namespace, "chaos")).get("attempt") == len(SERIES) + 1
            and (st.get("preemptions"), st.get("failures")) == (preempted, failed)
        ),
        duration=4,
    )
    complete_all(core, namespace, last)
    st = wait_status(
        custom, namespace, "chaos", "phase Succeeded", lambda s: s.get("phase") == "Succeeded"
    )
    assert (st["preemptions"], st["failures"]) == (preempted, failed)
    outcomes = [a["outcome"] for a in st["attempts"]]
    expected = ["Failed" if w == "exit1" else "Preempted" for w in SERIES] + ["Succeeded"]
    assert outcomes == expected, st["attempts"]
