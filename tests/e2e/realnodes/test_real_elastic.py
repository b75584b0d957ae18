"""An interruption the survivor trains through, then the whole gang again (spec.elasticity).

A 2-node TrainingRun with ``elasticity: {minNodes: 1, waitBeforeShrink: 0s}`` on exactly
two real spot nodes; the spot group replaces a lost instance only after a provisioning
delay (``provisioner``, preloaded images). NTH drains the worker's node and its instance
dies. Then:

- attempt 1 is a preemption (no failure); attempt 2 finds one node where it asks for two
  and shrinks at once (``CapacityShrink``, no PyTorchJob, no pod);
- attempt 3 trains on the survivor's node alone before the group launched any replacement,
  resuming the checkpoint the stopped gang saved (nothing lost), at world size 1;
- while it runs, a placeholder (the spares' Deployment, one replica) waits for the
  replacement; once it runs there, attempt 3 stops gracefully (``CapacityGrow``, no
  budget spent) and attempt 4 trains on both nodes from the step attempt 3 saved.

The run has no end of its own (a step budget the survivor could reach before the
replacement came would end the story early on a slow machine): it is deleted once attempt
4 trained.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrun_dev import chart_install, images, real_story, realnodes
from spotrun_dev.node_config import RealNode
from spotrun_dev.provisioner import CapacitySettings, Provisioner
from spotrun_dev.real_story import Story
from spotrun_dev.waiting import wait_for

DELAY_SECONDS = 20.0
SPARES = "spotrun.dev/spare-of=run"
ARGS = (
    *(a for a in real_story.TRAINER_ARGS if not a.startswith("--max-steps")),
    "--max-steps=100000",
)


def outcomes(st: dict[str, Any]) -> list[tuple[int, int | None, str | None]]:
    return [(a["attempt"], a.get("nodes"), a.get("outcome")) for a in st.get("attempts") or []]


@pytest.mark.timeout(900)
def test_the_survivor_trains_through_an_interruption_and_the_whole_gang_returns(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    core = client.CoreV1Api(api_client)
    realnodes.exactly_spot_nodes(core, 2)  # a third free node would take the whole gang
    story = Story(api_client, namespace, len(real_nodes))
    story.exits.start()
    body = real_story.trainer_run("run", built_images["trainer"].ref, "ckpt", ARGS)
    body["spec"]["elasticity"] = {"minNodes": 1, "waitBeforeShrink": "0s"}
    story.custom.create_namespaced_custom_object(
        *real_story.TR[:2], namespace, real_story.TR[2], body
    )
    story.wait_training("run", 1, 40)
    master = next(p for p in story.pods("run", 1) if real_story.is_master(p))
    worker = next(p for p in story.pods("run", 1) if not real_story.is_master(p))
    lost_node, kept_node = str(worker.spec.node_name), str(master.spec.node_name)

    settings = CapacitySettings(DELAY_SECONDS, "preloaded")
    with Provisioner(core, 2, settings) as group:
        t0 = time.monotonic()
        story.nth_notice(lost_node)
        shrunk_after = story.next_training(3, t0)
        launched_before = list(group.group.launches)
        assert story.gang_nodes("run", 3) == [kept_node]
        resumed3 = story.resumed_from("run", 3)
        st = story.wait_status(
            "run",
            "a placeholder for the missing node",
            lambda s: (s.get("spares") or {}).get("replicas") == 1,
            60,
        )
        st = story.wait_status(
            "run",
            "attempt 3 grown back",
            lambda s: any(a.get("outcome") == "CapacityGrow" for a in s.get("attempts") or []),
            240,
        )
        grown_after = story.next_training(4, t0)
        replacement = [name for _, name in group.group.launches]
        resumed4 = story.resumed_from("run", 4)
        story.wait_training("run", 4, resumed4 + 10)
        gang4 = story.gang_nodes("run", 4)
        # The placeholder's node time is charged as spares'. Read unrounded (status.spares):
        # cost.sparesUSD is in cents, and a placeholder the grow preempted a second after
        # it was bound costs $0.003, shown as 0 (a clean clone's run, 11-28).
        st = story.wait_status("run", "the placeholder's cost", _spare_charged, 60)
        story.custom.delete_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2], "run"
        )
    story.replace_nodes()  # the dying instance gone, the fleet whole again
    story.exits.stop()

    print(
        f"{settings.describe()}, elastic: nth -> the survivor training {shrunk_after}s, "
        f"the whole gang again {grown_after}s"
    )
    assert launched_before == [], f"attempt 3 waited for the replacement: {launched_before}"
    assert outcomes(st) == [
        (1, 2, "Preempted"),
        (2, 2, "CapacityShrink"),
        (3, 1, "CapacityGrow"),
        (4, 2, None),
    ], outcomes(st)
    assert st["attempts"][1]["shrinkTo"] == 1
    assert not [k for k in story.exits.created if k[:2] == ("run", "2")], "attempt 2 ran a pod"
    assert (int(st["preemptions"]), int(st.get("failures", 0))) == (1, 0), st
    # Nothing lost at either restart: each resumed the step its predecessor stopped at.
    assert resumed3 >= int(st["attempts"][0]["endStep"]), (resumed3, st["attempts"][0])
    assert resumed4 >= int(st["attempts"][2]["endStep"]) > resumed3, (resumed4, st["attempts"])
    assert gang4 == sorted([kept_node, *replacement]), (gang4, replacement)
    assert st["phase"] == "Running", st
    assert (st.get("spares") or {}).get("replicas") is None, st["spares"]  # none asked for
    wait_for("the placeholders gone", lambda: not _spares(core, namespace), timeout=60)


def _spare_charged(st: dict[str, Any]) -> bool:
    ended = st.get("spares") or {}
    return float(ended.get("endedUSD") or 0) > 0 and float(ended.get("endedNodeSeconds") or 0) > 0


def _spares(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=SPARES).items)
