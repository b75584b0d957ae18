"""``--replace-on-rebalance`` on real kubelets, with the chart's operator pod and the real
training operator: the replacement is asked at the recommendation and the gang moves once
it is warm.

A 2-node TrainingRun on exactly two real spot nodes, no spare. The spot group
(``provisioner``, preloaded images) launches for the namespace's pods the scheduler cannot
place, after the provisioning delay (Cluster Autoscaler's scale-up). NTH in IMDS mode
handles a rebalance recommendation on the worker's node: its Event, the taint and a cordon,
no drain; the instance lives on. Then:

- attempt 1 keeps training while one placeholder in ``<run>-capacity`` asks for a node off
  the recommended node and the survivor's;
- the group launches exactly one node; once the placeholder runs there, the gang stops
  gracefully (a preemption, ``rebalance-recommendation``) with a step past the one it had
  at the recommendation, and attempt 2 trains on the survivor and the new node from where
  attempt 1 saved;
- one preemption, no failure, and the recommended instance was never lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from test_real_capacity_request import start_training

from spotrun_dev import chart_install, images, real_interrupt, real_story, realnodes
from spotrun_dev.node_config import RealNode
from spotrun_dev.provisioner import CapacitySettings, Provisioner
from spotrun_dev.real_story import Story

DELAY_SECONDS = 15.0


@pytest.fixture
def operator_args() -> tuple[str, ...]:
    return ("--replace-on-rebalance",)


@pytest.mark.timeout(900)
def test_a_rebalance_recommendation_moves_the_gang_to_a_warm_replacement(
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
    advised, kept = start_training(story, built_images["trainer"].ref)

    settings = CapacitySettings(DELAY_SECONDS, "preloaded")
    try:
        with Provisioner(core, 2, settings, namespace=namespace) as group:
            t0 = time.monotonic()
            real_interrupt.nth_rebalance(core, advised)
            asked = story.wait_status("run", "a capacity request", capacity_requested, 60, 0.5)
            moved = story.wait_status("run", "the move", gang_moved, 240, 0.5)
            t_moved = time.monotonic()
            to_training = story.next_training(2, t0)
            launches = [name for _, name in group.group.launches]
            described = group.describe()
            alive = realnodes.healthy(realnodes.FleetState.load().nodes[advised])
        resumed = story.resumed_from("run", 2)
        story.wait_training("run", 2, resumed + 5)
        gang2 = story.gang_nodes("run", 2)
        st = story.wait_status("run", "the request withdrawn", request_withdrawn, 60)
    finally:
        story.custom.delete_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2], "run"
        )
        story.dying.start(advised)  # reclaimed later, as recommended
        story.replace_nodes(wait_dying=False)

    first = st["attempts"][0]
    print(
        f"{described}: rebalance recommendation -> moved {round(t_moved - t0, 1)}s -> "
        f"training again {to_training}s on {gang2}; attempt 1 trained "
        f"{int(first['endStep']) - int(asked['progress']['step'])} steps after it"
    )
    assert "outcome" not in asked["attempts"][0], asked  # no restart on the advice itself
    assert (first["outcome"], first["reason"]) == ("Preempted", "rebalance-recommendation")
    assert int(first["endStep"]) > int(asked["progress"]["step"]), (first, asked["progress"])
    assert moved["attempts"][0]["interruptedNodes"] == [advised], moved["attempts"][0]
    assert alive, "the recommended instance was lost; the move proves nothing"
    assert len(launches) == 1, launches
    assert gang2 == sorted([kept, launches[0]]), (gang2, launches)
    assert resumed >= int(first["endStep"]), (resumed, first)
    assert (int(st["preemptions"]), int(st.get("failures", 0))) == (1, 0), st
    assert st["phase"] == "Running", st


def capacity_requested(st: dict[str, Any]) -> bool:
    return (st.get("spares") or {}).get("requested") == 1 and bool(st.get("progress"))


def gang_moved(st: dict[str, Any]) -> bool:
    return bool((st.get("attempts") or [{}])[0].get("outcome"))


def request_withdrawn(st: dict[str, Any]) -> bool:
    return "requested" not in (st.get("spares") or {}) and st.get("attempt") == 2
