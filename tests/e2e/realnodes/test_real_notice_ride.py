"""``--train-through-notice`` on real kubelets, with the chart's operator pod
(``operator.spotNotice: trainThrough``, its RBAC included) and the real training operator:
the gang trains through a spot interruption notice and moves once its replacement is warm,
while NTH's drain is held by the run's PodDisruptionBudget.

A 2-node TrainingRun on exactly two real spot nodes, no spare. The spot group
(``provisioner``, preloaded images) launches for the namespace's pods the scheduler cannot
place, after the provisioning delay. NTH handles a spot interruption notice on the
worker's node as in IMDS mode (the taint, the label, the cordon, then the drain through
the Eviction API, retried for its 120 s timeout: ``real_interrupt.nth_notice``), or,
without NTH, Karpenter v1 does (the NodeClaim's deletion: the Node's deletionTimestamp held
by its termination finalizer, the disrupted taint, the drain through the Eviction API
until EC2 ends the instance: ``real_interrupt.karpenter_notice``). Then:

- the budget answers NTH's evictions 429, so attempt 1 keeps training while one
  placeholder in ``<run>-capacity`` asks for a node off the noticed node and the survivor's;
- the group launches exactly one node; once the placeholder runs there, the gang stops
  gracefully (a preemption, ``spot-interruption`` or ``karpenter-disruption``) with
  steps past the one it had at the notice, the drain finishes (its pods are gone), and
  attempt 2 trains on the survivor and the new node from where attempt 1 saved;
- one preemption, no failure, and the noticed instance was still alive at the move
  (EC2 ends it two minutes after the notice).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kubernetes import client
from test_real_capacity_request import start_training
from test_real_rebalance import capacity_requested, gang_moved, request_withdrawn

from spotrun_dev import chart_install, images, plans_aws, real_interrupt, real_story, realnodes
from spotrun_dev.node_config import RealNode
from spotrun_dev.provisioner import CapacitySettings, Provisioner
from spotrun_dev.real_story import Story

DELAY_SECONDS = 15.0
# The component that acts on the notice, and the preemption's reason it leads to.
NOTICES = {
    "nth": (real_interrupt.nth_notice, "spot-interruption"),
    "karpenter": (real_interrupt.karpenter_notice, "karpenter-disruption"),
}


@pytest.fixture
def chart_values() -> tuple[str, ...]:
    return chart_install.TRAIN_THROUGH_NOTICE


@pytest.mark.timeout(900)
@pytest.mark.parametrize("component", sorted(NOTICES))
def test_the_gang_trains_through_a_spot_notice_and_moves_to_a_warm_replacement(
    component: str,
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    core = client.CoreV1Api(api_client)
    realnodes.exactly_spot_nodes(core, 2)  # a free node would be a ready replacement
    story = Story(api_client, namespace, len(real_nodes))
    noticed, kept = start_training(story, built_images["trainer"].ref)
    budget = client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(
        "run-gang", namespace
    )

    notice, reason = NOTICES[component]
    drained: list[bool] = []
    acting = threading.Thread(target=lambda: drained.append(notice(core, noticed)), daemon=True)
    settings = CapacitySettings(DELAY_SECONDS, "preloaded")
    try:
        with Provisioner(core, 2, settings, namespace=namespace) as group:
            t0 = time.monotonic()
            acting.start()
            asked = story.wait_status("run", "a capacity request", capacity_requested, 60, 0.5)
            moved = story.wait_status("run", "the move", gang_moved, 100, 0.5)
            t_moved = time.monotonic()
            alive = realnodes.healthy(realnodes.FleetState.load().nodes[noticed])
            acting.join(timeout=plans_aws.NTH_DRAIN_TIMEOUT_SECONDS)
            to_training = story.next_training(2, t0)
            launches = [name for _, name in group.group.launches]
            described = group.describe()
        resumed = story.resumed_from("run", 2)
        story.wait_training("run", 2, resumed + 5)
        gang2 = story.gang_nodes("run", 2)
        st = story.wait_status("run", "the request withdrawn", request_withdrawn, 60)
    finally:
        story.custom.delete_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2], "run"
        )
        acting.join(timeout=plans_aws.NTH_DRAIN_TIMEOUT_SECONDS)
        if component == "karpenter":  # Karpenter ends the drained instance itself
            real_interrupt.karpenter_terminates(core, noticed)
        else:
            story.dying.start(noticed)  # EC2 ends it at the notice's time
        story.replace_nodes(wait_dying=False)

    first = st["attempts"][0]
    print(
        f"{described}: {component} spot notice -> moved {round(t_moved - t0, 1)}s -> "
        f"training again {to_training}s on {gang2}; attempt 1 trained "
        f"{int(first['endStep']) - int(asked['progress']['step'])} steps after the notice"
    )
    assert budget.spec.min_available == 2, budget.spec
    assert "outcome" not in asked["attempts"][0], asked  # the notice alone stops nothing
    assert asked["attempts"][0].get("noticeSince"), asked["attempts"][0]
    assert (first["outcome"], first["reason"]) == ("Preempted", reason)
    assert int(first["endStep"]) > int(asked["progress"]["step"]), (first, asked["progress"])
    assert moved["attempts"][0]["interruptedNodes"] == [noticed], moved["attempts"][0]
    assert alive, "the noticed instance was lost before the move; the move proves nothing"
    assert drained == [True], f"{component}'s drain did not finish once the gang had moved"
    assert len(launches) == 1, launches
    assert gang2 == sorted([kept, launches[0]]), (gang2, launches)
    assert resumed >= int(first["endStep"]), (resumed, first)
    assert (int(st["preemptions"]), int(st.get("failures", 0))) == (1, 0), st
    assert st["phase"] == "Running", st
