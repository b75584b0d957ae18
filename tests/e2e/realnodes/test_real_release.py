"""A release, installed as users install it: ``make release`` to the local registry, then
``helm install`` from that registry's OCI chart, with nothing pre-imported.

The harness runs the CNCF distribution registry on its bridge's gateway (plain HTTP,
``node_config.REGISTRY_HOST``) and every real node's containerd pulls from it through its
``hosts.toml`` (docs/eks.md "Publishing to ECR" is the same path on AWS). The release
pushes the operator and trainer images and the chart; the chart is installed from
``oci://<registry>/spotrun/charts/spotrun`` with ``imagePullPolicy: IfNotPresent``; the
operator's pod and the trainer's pods run images their node pulled from the registry
(their ``imageID`` is the pushed digest, the kubelet reports a pull). The TrainingRun
trains, lives through an NTH spot interruption and trains again in attempt 2.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrun_dev import chart_install, node_services, real_story, release, release_version
from spotrun_dev.node_config import REGISTRY_HOST, RealNode
from spotrun_dev.release_plan import CHART_DIR, RELEASE_IMAGES
from spotrun_dev.waiting import ClusterError, wait_for


def _node_images(core: client.CoreV1Api) -> set[str]:
    """Every image name a real node's kubelet reports its containerd holds."""
    names: set[str] = set()
    for node in core.list_node(label_selector="spotrun.dev/real-node=true").items:
        for image in node.status.images or []:
            names.update(image.names or [])
    return names


def _pulled(core: client.CoreV1Api, namespace: str, pod: str, ref: str) -> bool:
    """The kubelet's event for ``pod``: it pulled ``ref`` (not "already present")."""
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod},reason=Pulled"
    ).items
    return any(f'Successfully pulled image "{ref}"' in (e.message or "") for e in events)


def _from_registry(image_id: str, digest: str) -> bool:
    """A container's imageID names the registry and the digest the release pushed (the
    repository part may be an earlier run's: containerd keeps every name of an image)."""
    return image_id.startswith(f"{REGISTRY_HOST}/") and image_id.endswith(f"@{digest}")


def _container(pod: client.V1Pod) -> client.V1ContainerStatus | None:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return statuses[0] if statuses else None


def _started_images(story: real_story.Story, attempt: int) -> list[tuple[str, str, str]]:
    """(pod, image, imageID) of each started trainer container of ``attempt``."""
    out = []
    for pod in story.pods("run", attempt):
        status = _container(pod)
        if status is not None and status.image_id:
            out.append((pod.metadata.name, status.image, status.image_id))
    return out


@pytest.mark.timeout(2400)
def test_release_installs_from_the_registry_and_trains_through_nth(
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    crd: dict[str, Any],
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    tmp_path: Path,
) -> None:
    assert node_services.registry_ready(), f"the harness's registry on {REGISTRY_HOST} is not up"
    # A namespace of its own per run (REGISTRY=host[:port]/namespace): no node holds these
    # refs yet, so every one is pulled, however often the test runs on the same nodes.
    registry = f"{REGISTRY_HOST}/e2e-{uuid.uuid4().hex[:8]}"
    version = release_version.source_version()
    out = tmp_path / "release"

    # make release REGISTRY=<the registry> VERSION=<the repository's> INSECURE=1
    t0 = time.monotonic()
    rc = release.run(registry, version, insecure=True, username=None, out=out, dry_run=False)
    assert rc == 0, f"the release failed with exit {rc} (its log is above)"
    print(f"release {version} to {registry}: {time.monotonic() - t0:.0f} s")
    refs = {name: release_version.image_ref(registry, name, version) for name in RELEASE_IMAGES}
    digests = {name: (out / f"{name}.digest").read_text().strip() for name in refs}
    assert not set(refs.values()) & _node_images(core), "a node already holds a pushed ref"

    # helm install spotrun oci://<registry>/spotrun/charts/spotrun --version VERSION
    chart = f"{release_version.chart_repository(registry)}/{CHART_DIR.name}"
    operator = chart_install.Release("spotrun", namespace)
    story = real_story.Story(api_client, namespace, len(real_nodes))
    try:
        chart_install.install_operator(
            core,
            namespace,
            refs["operator"],
            operator.name,
            chart=chart,
            chart_args=("--version", version, "--plain-http"),
            pull_policy="IfNotPresent",
        )
        pod = operator.pod(core)
        assert pod is not None
        status = _container(pod)
        assert status is not None
        assert pod.spec.containers[0].image == refs["operator"], pod.spec.containers[0].image
        assert pod.spec.containers[0].image_pull_policy == "IfNotPresent"
        assert _from_registry(status.image_id, digests["operator"]), (status.image, status.image_id)
        wait_for(
            "the kubelet's Pulled event of the operator's image",
            lambda: _pulled(core, namespace, pod.metadata.name, refs["operator"]),
            timeout=30,
        )
        listed = chart_install.helm("list", "-n", namespace, "-o", "yaml")
        assert f"chart: spotrun-{version}" in listed, listed

        # A TrainingRun of the pushed trainer image, pulled by the nodes it lands on.
        body = real_story.trainer_run("run", refs["trainer"], "ckpt", real_story.TRAINER_ARGS)
        body["spec"]["podTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
        story.custom.create_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2], body
        )
        t1 = time.monotonic()
        # Two nodes pull the trainer (GBs) at once: a generous wait for both to start.
        wait_for(
            "attempt 1's trainer containers to start from the pulled image",
            lambda: len(_started_images(story, 1)) == 2,
            timeout=1200,
            interval=2,
        )
        print(f"attempt 1 pulled and started: {time.monotonic() - t1:.0f} s")
        for name, image, image_id in _started_images(story, 1):
            assert _from_registry(image_id, digests["trainer"]), (name, image, image_id)
            assert _pulled(core, namespace, name, refs["trainer"]), name

        nth = story.interrupt(1, "nth", 40)
        progress = story.wait_training("run", 2, nth.resumed_from + 10)
        print(f"nth: {nth}; attempt 2 at step {progress.get('step')}")
        assert nth.recorded_signal == real_story.SIGNAL_OF["nth"], nth
        assert nth.lost_steps == 0, nth
        for name, image, image_id in _started_images(story, 2):
            assert _from_registry(image_id, digests["trainer"]), (name, image, image_id)
        assert operator.restarts(core) == 0
    except (AssertionError, ClusterError):
        sys.stderr.write(f"\n--- operator pod log ---\n{operator.log(core, 300)}\n")
        raise
    finally:
        story.custom.delete_collection_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2]
        )
        story.replace_nodes()  # the interrupted node died: the ASG replaces it
        chart_install.uninstall(operator)
