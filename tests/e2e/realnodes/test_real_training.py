"""The whole loop, real: the chart's operator pod runs the real trainer image on real nodes,
real interruptions stop it, and it resumes from its own checkpoints, bit for bit.

One TrainingRun of 2 nodes (DDP over gloo between two pods, MASTER_ADDR through CoreDNS)
lives through, in order: an NTH spot interruption (taint, cordon, drain through the
Eviction API; then the instance dies), a network partition of the master's node while its
rank 0 holds a commit (its processes live on: the next attempt starts without waiting for
it, and the commit it tries after the next attempt's fence is refused; real_partition), an
application crash (the trainer exits 1 once, by its own fault flag), and a graceful node
shutdown (the real kubelet's shutdown manager, told by logind). Its final weights must be
bitwise equal to those of a reference run of the same image and world size that nothing
interrupted. The figures per interruption are printed and attached to the report.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrun_api import contract
from spotrun_dev import chart_install, images, real_story
from spotrun_dev.node_config import SHUTDOWN_CRITICAL_SECONDS, SHUTDOWN_GRACE_SECONDS, RealNode
from spotrun_dev.real_partition import HOLD_AT, committed
from spotrun_dev.real_story import CRASH_AT, CRASH_ATTEMPT, MAX_STEPS, PLAN, SIGNAL_OF, Story

# What the kubelet's shutdown manager gives regular pods (shorter than their own 60 s).
SHUTDOWN_POD_GRACE = SHUTDOWN_GRACE_SECONDS - SHUTDOWN_CRITICAL_SECONDS


@pytest.fixture
def operator_args() -> tuple[str, ...]:
    """The crash settles 5 s, not the default 45 s, before it is charged
    (``--failure-settle-seconds``: a dead node may yet explain an application error). Its
    nodes stay healthy, so only the wait changes; the other signals' ranks exit 143 or 86
    (peer lost), which no settle window charges."""
    return ("--failure-settle-seconds=5",)


@pytest.mark.timeout(2700)
def test_real_run_survives_interruptions_bitwise(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
    record_property: Any,
) -> None:
    story = Story(api_client, namespace, len(real_nodes))
    ref = story.reference(built_images["trainer"].ref)
    story.start(built_images["trainer"].ref)
    nth = story.interrupt(*PLAN[0])
    partition = story.interrupt(*PLAN[1])
    crashed = story.crash()
    shutdown = story.interrupt(*PLAN[2])
    run = story.finish()
    figures = [dataclasses.asdict(i) | {"lost_steps": i.lost_steps} for i in story.interruptions]
    print(json.dumps(figures, indent=2))
    record_property("interruptions", json.dumps(figures))

    for rec in (nth, partition, shutdown):
        assert rec.recorded_signal == SIGNAL_OF[rec.signal], rec
    # NTH and shutdown: every rank saved at the next step boundary inside its grace
    # period and exited 143; the next attempt resumed from exactly that checkpoint.
    for rec, grace in ((nth, 60), (shutdown, SHUTDOWN_POD_GRACE)):
        exits = story.exits.of("run", rec.attempt)
        assert exits == [143, 143], f"{rec}\n{story.exits.describe('run', rec.attempt)}"
        assert rec.lost_steps == 0, rec
        # Signal -> the trainer's commit of that checkpoint, inside the pod's grace period
        # (checkpointTime has whole seconds, so a sub-second save can read as -0.x).
        assert rec.save_seconds is not None and -1 < rec.save_seconds < grace, rec
    assert_partition_fenced(story, partition, shared_claims["ckpt"])
    # The crash: both ranks exit 1 at CRASH_AT; one failure, no preemption.
    crash = CRASH_ATTEMPT
    assert story.exits.of("run", crash) == [1, 1], story.exits.describe("run", crash)
    assert int(crashed["preemptions"]) == 2 and int(crashed["failures"]) == 1, crashed
    assert story.resumed_from("run", crash + 1) <= CRASH_AT

    assert ref.get("phase") == "Succeeded", ref
    assert (int(ref.get("preemptions", 0)), int(ref.get("failures", 0))) == (0, 0), ref
    assert run.get("phase") == "Succeeded", run
    assert (int(run["preemptions"]), int(run["failures"])) == (3, 1), run
    got = real_story.final_weights(shared_claims["ckpt"], MAX_STEPS)
    want = real_story.final_weights(shared_claims["ckpt-ref"], MAX_STEPS)
    assert got, "the final checkpoint holds no weights"
    assert real_story.differing_weights(got, want) == []
    # The operator's pod lived through every node's loss and replacement: its lease
    # renewals kept reaching the apiserver (a lost lease exits the process).
    assert operator_release.restarts(client.CoreV1Api(api_client)) == 0


def assert_partition_fenced(story: Story, rec: real_story.Interruption, folder: Path) -> None:
    """The partition (real_partition): the worker's heartbeat named the cut-off master's
    pod; the next attempt started while that rank still lived; its commit, released after
    the next attempt's fence, was refused; the next attempt loaded only what the fence
    accepted, and no checkpoint of the cut-off attempt at or past the held step exists."""
    seen = story.partitioned
    assert seen is not None and seen.held_step >= HOLD_AT, seen
    exits = story.exits.of("run", rec.attempt)
    assert contract.EXIT_PEER_LOST in exits, story.exits.describe("run", rec.attempt)
    assert seen.fence.epoch == rec.attempt + 1, seen
    assert f"commit of step {seen.held_step} refused: fenced by attempt {rec.attempt + 1}" in (
        seen.refused_line
    ), seen
    accepted = [a.step for a in seen.fence.accepted]
    assert accepted and max(accepted) < seen.held_step, seen
    assert rec.resumed_from == max(accepted), (rec, seen)
    late = [c for c in committed(folder) if c.epoch == rec.attempt and c.step >= seen.held_step]
    assert late == [], late


@pytest.mark.timeout(1200)
def test_next_gang_waits_for_ranks_still_saving(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    """The safety rule, on real kubelets: while any rank of attempt N may still be writing
    into the checkpoint folder (here every save takes 20 s of its 60 s grace), no pod of
    attempt N+1 exists: every attempt-N container has exited (the kubelet reports the pod
    terminal) or its pod is gone first. And N+1 resumes from the slow savers' checkpoint."""
    story = Story(api_client, namespace, len(real_nodes))
    story.exits.start()
    slow = (*real_story.TRAINER_ARGS, "--fault.slow-save-seconds=20")
    body = real_story.trainer_run("run", built_images["trainer"].ref, "ckpt", slow)
    body["spec"]["checkpoint"]["interval"] = "30m"  # only the save on SIGTERM is slow here
    story.custom.create_namespaced_custom_object(
        *real_story.TR[:2], namespace, real_story.TR[2], body
    )
    nth = story.interrupt(1, "nth", 20)
    story.dying.leave()  # the next test's real_nodes replaces the drained instance
    story.exits.stop()

    assert story.exits.of("run", 1) == [143, 143], story.exits.describe("run", 1)
    assert nth.lost_steps == 0 and nth.resumed_from == nth.last_step, nth
    # The 20 s save commits inside the 60 s grace (checkpointTime has whole seconds: -1).
    assert nth.save_seconds is not None and 20 - 1 < nth.save_seconds < 60, nth
    # The rule is about writers: a pod whose containers all exited (the kubelet reports it
    # Failed) writes nothing, even while its object waits for the kubelet to finalize it.
    order = [(ev, attempt, pod) for ev, run, attempt, pod in story.exits.order if run == "run"]
    first_new = min(
        i for i, (ev, attempt, _) in enumerate(order) if (ev, attempt) == ("ADDED", "2")
    )
    old_pods = {pod for ev, attempt, pod in order if attempt == "1"}
    assert len(old_pods) == 2, order
    for pod in old_pods:
        ended = min(
            i for i, (ev, a, p) in enumerate(order) if p == pod and ev in ("ENDED", "DELETED")
        )
        assert ended < first_new, f"attempt 2 started while {pod} could still write: {order}"
    # The same from the kubelets' own clocks: every attempt-1 container had exited before
    # the first attempt-2 pod was created.
    new_created = min(t for (r, a, _), t in story.exits.created.items() if (r, a) == ("run", "2"))
    for (r, a, pod), ends in story.exits.finished.items():
        if (r, a) == ("run", "1"):
            assert ends and max(ends) <= new_created, (pod, ends, new_created)
