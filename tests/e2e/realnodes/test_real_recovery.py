"""A silent instance loss recovered on a warm spare, with production's replacement delay.

A 2-node TrainingRun keeps one warm spare (``spec.capacity.warmSpares: 1``: a placeholder
pod of the trainer image at PriorityClass ``spotrun-spare`` holds the third real spot
node). The spot group replaces a lost instance only after a provisioning delay
(``provisioner``: preloaded images, a delay longer than the whole recovery should take).
Every process of the worker's node is SIGKILLed at once (the instance vanishes). Then:

- the master's heartbeat names the worker's pod and exits 86 (peer-lost); the attempt is a
  preemption, never a failure;
- the operator starts attempt 2 without waiting for the dead pod's node to be marked (the
  fence), the scheduler preempts the spare, and attempt 2 trains on the master's node and
  the spare's node before the group's replacement has even been launched;
- no second gang ran while a rank of attempt 1 could still commit: the killed ranks were
  gone before attempt 2's first pod existed, the survivor had ended (its own exit), and on
  the volume every checkpoint of attempt 1 was committed before attempt 2's fence, which
  accepts the one attempt 2 loaded;
- the spare's Deployment asks for another spare at once (the replacement the group
  launches after its delay is where it will run), and the spare's node time is charged
  apart (``status.cost.sparesUSD``).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from kubernetes import client

from spotrun_api import contract
from spotrun_api.prices import DEFAULT_ON_DEMAND_USD_PER_HOUR
from spotrun_dev import chart_install, images, real_partition, real_story, realnodes
from spotrun_dev.node_config import RealNode
from spotrun_dev.provisioner import CapacitySettings, Provisioner
from spotrun_dev.real_story import Story
from spotrun_dev.waiting import wait_for

# Longer than the recovery on the spare takes: the replacement cannot be what it runs on.
DELAY_SECONDS = 60.0
SPARE_LABEL = "spotrun.dev/spare-of"


def spare_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"{SPARE_LABEL}=run").items)


def running_spare_node(core: client.CoreV1Api, namespace: str) -> str | None:
    for p in spare_pods(core, namespace):
        if p.status.phase == "Running" and not p.metadata.deletion_timestamp:
            return str(p.spec.node_name)
    return None


def committed_at(folder: Path, step: int) -> dt.datetime:
    marker = folder / contract.step_dir_name(step) / contract.COMMIT_MARKER
    stamp = str(json.loads(marker.read_text())["committed_at"])
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.mark.timeout(900)
def test_a_silent_loss_resumes_on_the_warm_spare_before_any_replacement(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    core = client.CoreV1Api(api_client)
    assert len(real_nodes) == 3, "a 2-node gang and one spare need the 3 real spot nodes"
    story = Story(api_client, namespace, len(real_nodes))
    story.exits.start()
    started = dt.datetime.now(dt.UTC)
    env = [{"name": contract.ENV_PEER_TIMEOUT_SECONDS, "value": "10"}]
    body = real_story.trainer_run(
        "run", built_images["trainer"].ref, "ckpt", real_story.TRAINER_ARGS, env=env
    )
    body["spec"]["capacity"] = {"warmSpares": 1}
    story.custom.create_namespaced_custom_object(
        *real_story.TR[:2], namespace, real_story.TR[2], body
    )
    story.wait_training("run", 1, 30)
    wait_for(
        "the spare to run", lambda: running_spare_node(core, namespace) is not None, timeout=120
    )
    spare_node = running_spare_node(core, namespace)
    (spare_uid,) = [p.metadata.uid for p in spare_pods(core, namespace)]
    master = next(p for p in story.pods("run", 1) if real_story.is_master(p))
    worker = next(p for p in story.pods("run", 1) if not real_story.is_master(p))
    lost_node, kept_node = str(worker.spec.node_name), str(master.spec.node_name)
    assert spare_node not in (lost_node, kept_node)

    settings = CapacitySettings(DELAY_SECONDS, "preloaded")
    with Provisioner(core, len(real_nodes), settings) as group:
        realnodes.kill_instance(lost_node)  # returns once every process of it is gone
        killed_at, t0 = dt.datetime.now(dt.UTC), time.monotonic()
        to_training = story.next_training(2, t0)
        launched_before = list(group.group.launches)
        gang2 = set(story.gang_nodes("run", 2))
        # The spare's ReplicaSet has asked for another one (the autoscaler's cue).
        wait_for(
            "a new spare pod",
            lambda: any(p.metadata.uid != spare_uid for p in spare_pods(core, namespace)),
            timeout=60,
        )
    st = story.wait_status(
        "run", "the spares' cost", lambda s: float(s["cost"].get("sparesUSD", 0)) > 0, 120
    )
    story.exits.stop()

    print(f"{settings.describe()}, one warm spare: loss -> training again {to_training}s")
    assert launched_before == [], f"attempt 2 waited for a replacement: {launched_before}"
    assert gang2 == {kept_node, str(spare_node)}, gang2
    # The dead peer's exit: a preemption named by the survivor, no failure spent.
    assert story.exits.of("run", 1) == [contract.EXIT_PEER_LOST], story.exits.describe("run", 1)
    assert (int(st["preemptions"]), int(st["failures"])) == (1, 0), st
    assert st["lastPreemption"]["signal"] == "peer-lost", st
    # Its node-seconds at most at the on-demand price (spot is cheaper): each ended spare
    # priced once, not again at every reconcile.
    spare_seconds = float(st["cost"]["spareNodeSeconds"])
    most = spare_seconds * DEFAULT_ON_DEMAND_USD_PER_HOUR["p4d.24xlarge"] / 3600 + 0.01
    assert 0 < float(st["cost"]["sparesUSD"]) <= most, st["cost"]
    assert spare_seconds <= (dt.datetime.now(dt.UTC) - started).total_seconds() * 2, st["cost"]
    assert_one_writer_at_a_time(story, shared_claims["ckpt"], killed_at)


def assert_one_writer_at_a_time(story: Story, folder: Path, killed_at: dt.datetime) -> None:
    """No pod of attempt 2 existed while a rank of attempt 1 could still commit, from the
    watch, the kubelets' clocks and the volume."""
    created2 = min(t for (r, a, _), t in story.exits.created.items() if (r, a) == ("run", "2"))
    assert killed_at <= created2, (killed_at, created2)
    for (r, a, pod), ends in story.exits.finished.items():
        if (r, a) == ("run", "1"):  # the survivor: its own exit came first
            assert ends and max(ends) <= created2, (pod, ends, created2)
    fence = real_partition.wait_fence(folder, 2, timeout=5)
    written = dt.datetime.fromisoformat(fence.written_at.replace("Z", "+00:00"))
    for c in real_partition.committed(folder):
        if c.epoch == 1:
            assert committed_at(folder, c.step) <= written, (c, fence)
    resumed = story.resumed_from("run", 2)
    assert resumed in {a.step for a in fence.accepted}, (resumed, fence)
