"""Restricted Pod Security, real: a namespace labelled
``pod-security.kubernetes.io/enforce=restricted`` (and audit, warn) runs the chart's
operator pod and a real 2-node training run through an NTH spot interruption.

The apiserver's PodSecurity admission refuses any pod of that namespace that runs as root,
keeps a capability, may escalate privileges or has no RuntimeDefault seccomp profile: the
operator's pod (the chart's defaults), the trainer pods (the operator's defaults), and the
Worker pods' ``init-pytorch`` init container, which the Kubeflow training operator adds
from its template (manifests/eks/pytorch-init-container.yaml; upstream's sets nothing).
The trainer also runs with a read-only root filesystem here (the user's podTemplate field
wins over spotrun's defaults) and an emptyDir at /tmp: it writes nothing else but its
checkpoint volume, whose folder the harness gives the trainer's uid as an EFS access
point would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_api import contract
from spotrun_dev import chart_install, images, real_story
from spotrun_dev.node_config import RealNode
from spotrun_dev.real_story import TR, TRAINER_ARGS, Story

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


def _restricted_container(c: client.V1Container, pod: client.V1Pod) -> list[str]:
    """What the restricted profile needs of one container, given its pod; [] when met."""
    sc = c.security_context or client.V1SecurityContext()
    psc = pod.spec.security_context or client.V1PodSecurityContext()
    problems = []
    if sc.allow_privilege_escalation is not False:
        problems.append("allowPrivilegeEscalation")
    if not sc.capabilities or "ALL" not in (sc.capabilities.drop or []):
        problems.append("capabilities.drop ALL")
    if not (sc.run_as_non_root or (sc.run_as_non_root is None and psc.run_as_non_root)):
        problems.append("runAsNonRoot")
    seccomp = sc.seccomp_profile or psc.seccomp_profile
    if seccomp is None or seccomp.type != "RuntimeDefault":
        problems.append("seccompProfile")
    return [f"{pod.metadata.name}/{c.name}: {p}" for p in problems]


def _pod_security_events(core: client.CoreV1Api, namespace: str) -> list[str]:
    """Events of pods that could not be created (PodSecurity or any other reason)."""
    return [
        f"{e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}"
        for e in core.list_namespaced_event(namespace).items
        if "PodSecurity" in (e.message or "") or (e.reason or "").startswith("FailedCreate")
    ]


@pytest.mark.timeout(1500)
def test_restricted_namespace_trains_through_an_interruption(
    api_client: client.ApiClient,
    namespace: str,
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    operator_release: chart_install.Release,
    built_images: dict[str, images.ImageArchive],
) -> None:
    core = client.CoreV1Api(api_client)
    # PodSecurity is enforced here: a pod without the restricted settings is refused.
    probe: dict[str, Any] = {
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": built_images["pause"].ref}]},
    }
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, probe, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)

    # The chart's operator pod was admitted and runs (install_operator waited for Ready).
    op = operator_release.pod(core)
    assert op is not None
    (op_container,) = op.spec.containers
    assert _restricted_container(op_container, op) == []
    assert op_container.security_context.read_only_root_filesystem is True
    assert op.spec.security_context.run_as_user == TRAINER_UID

    story = Story(api_client, namespace, len(real_nodes))
    story.exits.start()
    body = real_story.trainer_run("run", built_images["trainer"].ref, "ckpt", TRAINER_ARGS)
    pod_spec = body["spec"]["podTemplate"]["spec"]
    pod_spec["volumes"] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    pod_spec["containers"][0] |= {
        "securityContext": {"readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    story.custom.create_namespaced_custom_object(*TR[:2], namespace, TR[2], body)

    nth = story.interrupt(1, "nth", 20)
    # Attempt 2 trains: every one of its pods was admitted, init-pytorch included.
    pods = story.pods("run", 2)
    assert len(pods) == 2, [p.metadata.name for p in pods]
    problems: list[str] = []
    init_names: list[str] = []
    for pod in pods:
        psc = pod.spec.security_context
        assert (psc.run_as_non_root, psc.run_as_user, psc.fs_group) == (
            True,
            TRAINER_UID,
            TRAINER_UID,
        )
        for c in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            problems += _restricted_container(c, pod)
        init_names += [c.name for c in pod.spec.init_containers or []]
        trainer = pod.spec.containers[0]
        assert trainer.security_context.read_only_root_filesystem is True
    assert problems == []
    assert init_names == ["init-pytorch"]  # the Worker's wait for the Master's name
    run = story.finish()

    assert nth.recorded_signal == "spot-interruption", nth
    assert story.exits.of("run", 1) == [143, 143], story.exits.describe("run", 1)
    assert nth.lost_steps == 0 and nth.resumed_from == nth.last_step, nth
    assert run.get("phase") == "Succeeded", run
    assert (int(run["preemptions"]), int(run["failures"])) == (1, 0), run
    assert _pod_security_events(core, namespace) == []
    # The trainer wrote its checkpoints as its own non-root uid.
    final = shared_claims["ckpt"] / contract.step_dir_name(real_story.MAX_STEPS)
    assert final.stat().st_uid == TRAINER_UID, final
    assert operator_release.restarts(core) == 0
