"""The example workloads (examples/<name>/, manifests/examples/), run as a user runs them:
the manifest's TrainingRun and its image, on the real nodes, through one real interruption.

Per example: its image is pulled by the node's containerd from the harness registry (only
the example's own layer: the trainer's are on the node, as on a pre-baked AMI); the
interruption is delivered for real (NTH drain, the kubelet's graceful shutdown, or a
vanished instance); the resume point comes from the example's own log line, the counters
from the operator's status, and the final metric from the example's last lines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrun_api import contract
from spotrun_dev import chart_install, example_images, example_story, images
from spotrun_dev.node_config import RealNode
from spotrun_dev.real_story import SIGNAL_OF

# Chance level of each example's metric, which the run must beat: top-1 in % of 10 classes;
# recall@10 over the 300 items of the synthetic world; nDCG@10 of the untrained encoder
# (0.0195; a random ranking ~0.009); a uniform guess over the GPT's 28 characters, ln 28,
# as a loss (lower is better: negated).
CHANCE = {"resnet50": 100 / 10, "two_tower": 10 / 300, "mpnet_ablations": 0.02,
          "gpt_pretrain": -math.log(28)}  # fmt: skip
LOWER_IS_BETTER = {"gpt_pretrain"}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("example", sorted(example_story.PLANS))
def test_example_lives_through_an_interruption(
    example: str,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    real_nodes: list[RealNode],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
    record_property: Any,
) -> None:
    plan = example_story.plan_of(example)
    example_images.ensure_examples([example])
    story = example_story.ExampleStory(api_client, namespace, plan)
    try:
        story.start()
        story.interrupt()
        results = story.finish()
    finally:
        print(example_story.describe(plan, story.results))
        story.cleanup()
    record_property("example", json.dumps({n: vars(r) for n, r in results.items()}, default=str))

    # Every run was on the interrupted node: the packed ones shared it.
    assert {r.node for r in results.values()} == {next(iter(results.values())).node}, results
    for res in results.values():
        st = res.status
        assert st.get("phase") == plan.ends, f"{st}\n{res.log_tail}"
        if plan.ends == "Suspended":  # the budget ended it, gracefully, after a save
            assert st["attempts"][-1]["outcome"] == "BudgetExceeded", st["attempts"]
            keep = {r["metadata"]["name"]: r["spec"]["checkpoint"]["keep"] for r in plan.runs()}
            assert_bounded_retention(story.claim_folder(res.name), keep[res.name], st)
        assert (int(st["preemptions"]), int(st.get("failures", 0))) == (1, 0), st
        assert (st.get("lastPreemption") or {}).get("signal") == SIGNAL_OF[plan.signal], st
        if plan.signal == "loss":  # no final save: the newest periodic checkpoint
            assert 0 <= res.resumed_from <= res.last_step, res
        else:  # the save inside the notice: not one step lost
            assert res.lost_steps == 0, res
        assert res.metric is not None, res.log_tail
        sign = -1 if example in LOWER_IS_BETTER else 1
        assert sign * res.metric > CHANCE[example], res
    # The image came from the registry to the node: the kubelet pulled the example's image.
    pulled = [
        e.message
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "Pulled" and example_images.image_ref(example) in (e.message or "")
    ]
    assert pulled, "no pod pulled the example's image"


def assert_bounded_retention(folder: Path, keep: int, status: dict[str, Any]) -> None:
    """The volume holds at most ``keep`` committed step-N folders, the newest the stop's,
    and the best checkpoint apart, committed."""
    steps = sorted(
        int(d.name.split("-")[1])
        for d in folder.glob(f"{contract.STEP_DIR_PREFIX}*")
        if (d / contract.COMMIT_MARKER).is_file()
    )
    assert 0 < len(steps) <= keep, steps
    progress = status.get("progress") or {}
    if progress.get("checkpointStep") is not None:
        assert steps[-1] == int(progress["checkpointStep"]), (steps, progress)
    assert list((folder / "best").glob(f"*/{contract.COMMIT_MARKER}")), "no best checkpoint"
