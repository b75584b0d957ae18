"""A spot notice asks an autoscaler for the replacement at once, on real kubelets with the
chart's operator pod and the real training operator.

A 2-node TrainingRun on exactly two real spot nodes, no spare. The spot group
(``provisioner``, preloaded images) replaces terminated instances and launches for the
namespace's pods the scheduler cannot place, each after the provisioning delay (Cluster
Autoscaler's scale-up). NTH drains the worker's node on its notice, and the instance is
kept alive past the recovery (a notice gives two minutes): a group that only replaces
terminated instances would launch nothing. Then:

- at the notice the run keeps one placeholder in ``<run>-capacity``, unschedulable: off
  the going node and the survivor's, so it can only be placed on a new node;
- the group launches a node for it while the drained instance still runs, and attempt 2
  trains on the survivor and that node, resuming where the stopped gang saved;
- one preemption, no failure; the request is gone from the status and its pods from the
  cluster once attempt 2 exists.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrun_dev import chart_install, images, real_interrupt, real_story, realnodes
from spotrun_dev.node_config import RealNode
from spotrun_dev.provisioner import CapacitySettings, Provisioner, unschedulable_pod
from spotrun_dev.real_story import Story
from spotrun_dev.waiting import wait_for

DELAY_SECONDS = 15.0
REQUESTS = "spotrun.dev/capacity-for=run"
ARGS = (
    *(a for a in real_story.TRAINER_ARGS if not a.startswith("--max-steps")),
    "--max-steps=100000",
)


def start_training(story: Story, image: str) -> tuple[str, str]:
    """Run ``run`` (2 nodes, trains until deleted) to step 20: (worker's node, master's)."""
    body = real_story.trainer_run("run", image, "ckpt", ARGS)
    story.custom.create_namespaced_custom_object(
        *real_story.TR[:2], story.namespace, real_story.TR[2], body
    )
    story.wait_training("run", 1, 20)
    master = next(p for p in story.pods("run", 1) if real_story.is_master(p))
    worker = next(p for p in story.pods("run", 1) if not real_story.is_master(p))
    return str(worker.spec.node_name), str(master.spec.node_name)


def requests(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=REQUESTS).items)


def avoided(pod: client.V1Pod) -> set[str]:
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    return {
        v
        for t in terms.node_selector_terms
        for e in t.match_expressions or []
        if e.key == "kubernetes.io/hostname" and e.operator == "NotIn"
        for v in e.values
    }


@pytest.mark.timeout(900)
def test_a_spot_notice_asks_for_the_replacement_before_the_instance_ends(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    core = client.CoreV1Api(api_client)
    realnodes.exactly_spot_nodes(core, 2)  # a free node would take the gang: no request
    story = Story(api_client, namespace, len(real_nodes))
    lost_node, kept_node = start_training(story, built_images["trainer"].ref)

    settings = CapacitySettings(DELAY_SECONDS, "preloaded")
    seen: list[client.V1Pod] = []
    try:
        with Provisioner(core, 2, settings, namespace=namespace) as group:
            t0 = time.monotonic()
            real_interrupt.nth_drain(core, lost_node)  # the notice; the instance lives on
            asked = story.wait_status("run", "a capacity request", _requested, 60, 0.5)

            def pending_request() -> bool:
                seen[:] = [p for p in requests(core, namespace) if unschedulable_pod(p)]
                return bool(seen)

            wait_for("the placeholder unschedulable", pending_request, timeout=30)
            to_training = story.next_training(2, t0)
            launches = [name for _, name in group.group.launches]
            described = group.describe()
            alive = realnodes.healthy(realnodes.FleetState.load().nodes[lost_node])
        resumed = story.resumed_from("run", 2)
        story.wait_training("run", 2, resumed + 5)
        gang2 = story.gang_nodes("run", 2)
        st = story.wait_status("run", "the request withdrawn", _withdrawn, 60)
        wait_for("the placeholders gone", lambda: not requests(core, namespace), timeout=60)
        events = [
            e.message
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "CapacityRequested"
        ]
    finally:
        story.custom.delete_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2], "run"
        )
        story.dying.start(lost_node)  # the notice's end: the instance terminates
        story.replace_nodes(wait_dying=False)

    print(f"{described}: nth -> training again {to_training}s on {gang2}")
    assert asked["attempts"][0]["outcome"] == "Preempted", asked
    assert {lost_node, kept_node} <= avoided(seen[0]), avoided(seen[0])
    assert alive, "the drained instance was gone before the replacement joined"
    assert len(launches) == 1, launches
    assert gang2 == sorted([kept_node, launches[0]]), (gang2, launches)
    assert resumed >= int(st["attempts"][0]["endStep"]), (resumed, st["attempts"][0])
    assert (int(st["preemptions"]), int(st.get("failures", 0))) == (1, 0), st
    assert st["phase"] == "Running", st
    assert any("attempt 2 lacks 1 of 2 node(s)" in m for m in events), events


def _requested(st: dict[str, Any]) -> bool:
    return (st.get("spares") or {}).get("requested") == 1


def _withdrawn(st: dict[str, Any]) -> bool:
    return "requested" not in (st.get("spares") or {}) and st.get("attempt") == 2
