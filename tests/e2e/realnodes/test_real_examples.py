"""The example workloads (examples/<name>/, manifests/examples/), run as a user runs them:
the manifest's TrainingRun and its image, on the real nodes, through one real interruption.

Per example: its image is pulled by the node's containerd from the harness registry (only
the example's own layer: the trainer's are on the node, as on a pre-baked AMI); the
interruption is delivered for real (NTH drain, the kubelet's graceful shutdown, or a
vanished instance); the resume point comes from the example's own log line, the counters
from the operator's status, and the final metric from the example's last lines.

The namespace enforces the restricted Pod Security profile, as a production ML namespace
does: the chart's operator pod and every trainer pod the operator makes must be admitted
by the apiserver's PodSecurity admission (the Kubeflow training operator adds no init
container to the Worker pods: manifests/eks/pytorch-init-container.yaml); the GPT example
also runs with a read-only root filesystem (its manifest's podTemplate) and writes its
checkpoints as its own uid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_api import contract
from spotrun_dev import chart_install, example_images, example_story, images, real_partition
from spotrun_dev.node_config import RealNode
from spotrun_dev.real_story import SIGNAL_OF

# Chance level of each example's metric, which the run must beat: top-1 in % of 10 classes;
# recall@10 over the 300 items of the synthetic world; nDCG@10 of the untrained encoder
# (0.0195; a random ranking ~0.009); a uniform guess over the GPT's 28 characters, ln 28,
# as a loss (lower is better: negated).
CHANCE = {"resnet50": 100 / 10, "two_tower": 10 / 300, "mpnet_ablations": 0.02,
          "gpt_pretrain": -math.log(28)}  # fmt: skip
LOWER_IS_BETTER = {"gpt_pretrain"}


PSA_LABELS = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "audit", "warn")
    for suffix, value in (("", "restricted"), ("-version", "latest"))
}
TRAINER_UID = 65532


@pytest.fixture
def namespace(namespace: str, core: client.CoreV1Api) -> str:
    """The test's namespace, restricted before the chart or any run is put into it."""
    core.patch_namespace(namespace, {"metadata": {"labels": PSA_LABELS}})
    return namespace


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
    plan = example_story.plan_of(example)  # its image: built and pushed by the cluster fixture
    assert_restricted_is_enforced(core, namespace, built_images["pause"].ref)
    assert pod_problems(operator_release.pod(core)) == []
    story = example_story.ExampleStory(api_client, namespace, plan)
    try:
        story.start()
        story.interrupt()
        # Attempt 2 of every run was admitted under the restricted profile.
        pods = [p for name in story.results for p in story.story.pods(name, 2)]
        assert pods and [x for p in pods for x in pod_problems(p)] == []
        if example == "gpt_pretrain":  # its manifest's podTemplate
            trainers = [p.spec.containers[0].security_context for p in pods]
            assert all(sc.read_only_root_filesystem for sc in trainers), trainers
            inits = [c.name for p in pods for c in p.spec.init_containers or []]
            assert inits == [], inits  # the worker waits for its master itself
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
            folder = story.claim_folder(res.name)
            # The verdict comes first; the gang's save commits after it, and rank 0 reports
            # that checkpoint before it exits (its reporter's close).
            st = story.story.wait_status(
                res.name, "the stop's checkpoint in status.progress",
                lambda s, f=folder: (s.get("progress") or {}).get("checkpointStep")
                == max(committed_steps(f), default=None),
                timeout=120,
            )  # fmt: skip
            assert_bounded_retention(folder, keep[res.name], st)
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
    assert pod_security_events(core, namespace) == []
    for name in results:  # the checkpoints are the trainer's own, non-root
        folder = story.claim_folder(name)
        assert {d.stat().st_uid for d in folder.glob("step-*")} == {TRAINER_UID}, folder
    assert operator_release.restarts(core) == 0


def committed_steps(folder: Path) -> list[int]:
    """The steps of the committed step-N folders on the volume, oldest first."""
    return [c.step for c in real_partition.committed(folder)]


def assert_bounded_retention(folder: Path, keep: int, status: dict[str, Any]) -> None:
    """The volume holds at most ``keep`` committed step-N folders, the newest the stop's,
    and the best checkpoint apart, committed."""
    steps = committed_steps(folder)
    assert 0 < len(steps) <= keep, steps
    progress = status.get("progress") or {}
    if progress.get("checkpointStep") is not None:
        assert steps[-1] == int(progress["checkpointStep"]), (steps, progress)
    assert list((folder / "best").glob(f"*/{contract.COMMIT_MARKER}")), "no best checkpoint"


def assert_restricted_is_enforced(core: client.CoreV1Api, namespace: str, image: str) -> None:
    """A pod without the restricted settings is refused in the namespace."""
    probe = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "c", "image": image}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, probe, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)


def pod_problems(pod: client.V1Pod | None) -> list[str]:
    """What the restricted profile needs of a pod's containers (init ones included) and
    is not there; [] when met."""
    assert pod is not None
    psc = pod.spec.security_context or client.V1PodSecurityContext()
    problems = []
    for c in [*(pod.spec.init_containers or []), *pod.spec.containers]:
        sc = c.security_context or client.V1SecurityContext()
        if sc.allow_privilege_escalation is not False:
            problems.append(f"{pod.metadata.name}/{c.name}: allowPrivilegeEscalation")
        if not sc.capabilities or "ALL" not in (sc.capabilities.drop or []):
            problems.append(f"{pod.metadata.name}/{c.name}: capabilities.drop ALL")
        if not (sc.run_as_non_root or (sc.run_as_non_root is None and psc.run_as_non_root)):
            problems.append(f"{pod.metadata.name}/{c.name}: runAsNonRoot")
        seccomp = sc.seccomp_profile or psc.seccomp_profile
        if seccomp is None or seccomp.type != "RuntimeDefault":
            problems.append(f"{pod.metadata.name}/{c.name}: seccompProfile")
    return problems


def pod_security_events(core: client.CoreV1Api, namespace: str) -> list[str]:
    """Events of pods that could not be created (PodSecurity or any other reason)."""
    return [
        f"{e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
        for e in core.list_namespaced_event(namespace).items
        if "PodSecurity" in (e.message or "") or (e.reason or "").startswith("FailedCreate")
    ]
