"""A release, installed and used as users do, on the real nodes.

``make release`` pushes the images and the chart to the CNCF distribution registry the
harness runs on its bridge's gateway (plain HTTP, ``node_config.REGISTRY_HOST``); every
real node's containerd pulls from it through its ``hosts.toml`` (docs/eks.md "Publishing
to ECR" is the same path on AWS). The chart is installed from
``oci://<registry>/spotrun/charts/spotrun`` with two replicas (a leader and a standby,
docs/operator.md "High availability") and ``imagePullPolicy: IfNotPresent``, on a bare
system node (``bare_nodes``: a fresh node with no image but the sandbox's), so the
operator's image is downloaded whole. The trainer's pods run on the spot nodes, which hold
the local build's layers (the pre-baked AMI): they pull the release's own image, whose
layers they already have.

The run is the README's "Use with TorchX" walkthrough: ``torchx run -s spotrun dist.ddp``
with dist.ddp's own resources (cpu=2, memMB=1024 as a limit, gpu=0), its log followed by
``torchx log --tail`` and ``kubectl spotrun logs -f`` across the attempt change. The
attempt changes by an NTH spot interruption, during which the leading operator pod is
killed: the standby takes the Lease over and finishes the recovery, one preemption and
no failure, no step lost.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.utils import parse_quantity

from kubectl_helpers import BIN, Follower, cli_env, spotrun_cmd, torchx
from spotrun_dev import (
    bare_nodes,
    chart_install,
    node_services,
    real_story,
    release,
    release_version,
)
from spotrun_dev.cluster import LocalCluster
from spotrun_dev.node_config import REAL_NODE_LABEL, REGISTRY_HOST, RealNode
from spotrun_dev.release_plan import CHART_DIR, RELEASE_IMAGES
from spotrun_dev.waiting import ClusterError, wait_for

# The README's trainer arguments (a small GPT-2, a checkpoint every 3 s), with 120 steps
# instead of 300: the README's fixed sleeps need the run to outlast them; this test waits
# for each step of the story instead (the NTH notice comes at step 40 or later).
README_STEPS = 120
README_ARGS = (
    f"--max-steps={README_STEPS}", "--batch-size=8", "--model.n-layer=2", "--model.n-embd=32",
    "--model.seq-len=16", "--data.num-samples=512", "--report.log-every=10",
    "--fault.step-delay-seconds=0.2",
)  # fmt: skip


def _node_images(core: client.CoreV1Api, selector: str = f"{REAL_NODE_LABEL}=true") -> set[str]:
    """Every image name the kubelets of the nodes ``selector`` picks report."""
    names: set[str] = set()
    for node in core.list_node(label_selector=selector).items:
        for image in node.status.images or []:
            names.update(image.names or [])
    return names


def _pulled(core: client.CoreV1Api, namespace: str, pod: str, ref: str) -> bool:
    """The kubelet's event for ``pod``: it pulled ``ref`` (not "already present")."""
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod},reason=Pulled"
    ).items
    return any(f'Successfully pulled image "{ref}"' in (e.message or "") for e in events)


def _image_id(pod: client.V1Pod) -> str:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return str(statuses[0].image_id or "") if statuses else ""


def _from_registry(image_id: str, digest: str) -> bool:
    """A container's imageID names the registry and the digest the release pushed (the
    repository part may be an earlier run's: containerd keeps every name of an image)."""
    return image_id.startswith(f"{REGISTRY_HOST}/") and image_id.endswith(f"@{digest}")


def _pod_template(path: Path) -> Path:
    """The walkthrough's pod template: the real nodes and their taints."""
    spec = {"nodeSelector": {REAL_NODE_LABEL: "true"}, "tolerations": real_story.REAL_TOLERATIONS}
    path.write_text(yaml.safe_dump({"spec": spec}))
    return path


def _release(out: Path) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """``make release REGISTRY=<a fresh namespace of the registry> INSECURE=1``: (registry,
    version, refs, digests). A namespace of its own per run, so no node holds its refs yet."""
    assert node_services.registry_ready(), f"the harness's registry on {REGISTRY_HOST} is not up"
    registry = f"{REGISTRY_HOST}/e2e-{uuid.uuid4().hex[:8]}"
    version = release_version.source_version()
    t0 = time.monotonic()
    rc = release.run(registry, version, insecure=True, username=None, out=out, dry_run=False)
    assert rc == 0, f"the release failed with exit {rc} (its log is above)"
    print(f"release {version} to {registry}: {time.monotonic() - t0:.0f} s")
    refs = {name: release_version.image_ref(registry, name, version) for name in RELEASE_IMAGES}
    digests = {name: (out / f"{name}.digest").read_text().strip() for name in refs}
    return registry, version, refs, digests


def _forget_local_tags(registry: str) -> None:
    """The builder's tags of this run's refs (``<registry>/e2e-<id>/...``): their layers are
    the local builds', but a tag per run piled up in containers-storage, and an untagged
    image is what ``buildah rmi --prune`` reclaims once the next build supersedes it."""
    listed = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    ours = [ref for ref in listed if ref.startswith(f"{registry}/")]
    if ours:
        subprocess.run(["buildah", "rmi", *ours], capture_output=True, check=True)


def _submit(kc: Path, namespace: str, image: str, template: Path) -> tuple[str, str]:
    """The walkthrough's ``torchx run``: (app handle, run name)."""
    cfg = (
        f"namespace={namespace},checkpoint_claim=ckpt,checkpoint_interval=3s,"
        f"pod_template={template},grace_period_seconds=30,image_pull_policy=IfNotPresent"
    )
    out = torchx(
        kc, "run", "-s", "spotrun", "-cfg", cfg, "dist.ddp", "-j", "1x1", "--image", image,
        "-m", "spotrun_lm", "--", *README_ARGS,
    ).stdout  # fmt: skip
    handle = str(out).strip().splitlines()[-1]
    assert handle.startswith(f"spotrun://torchx/{namespace}:spotrun-lm-"), out
    return handle, handle.rsplit(":", 1)[1]


def _kill_leader(api: client.ApiClient, operator: chart_install.Release) -> str:
    """Force-delete the pod holding the Lease (no graceful release); wait until the
    standby holds it. Returns the new leader."""
    core = client.CoreV1Api(api)
    old = operator.leader(api)
    assert old in {p.metadata.name for p in operator.pods(core)}, old
    core.delete_namespaced_pod(old, operator.namespace, grace_period_seconds=0)
    holder: list[str | None] = [None]

    def taken_over() -> bool:
        holder[0] = operator.leader(api)
        return holder[0] not in (None, old)

    wait_for("the standby to take the Lease over", taken_over, timeout=120, interval=1)
    return str(holder[0])


def _check_followed(name: str, step: int, output: str) -> None:
    """A follower streamed attempt 1's master to the checkpoint it committed when it
    stopped, then attempt 2's, resumed from that very step (no step lost)."""
    for line in (
        f"--- spotrun: attempt 1, pod {name}-a1-master-0 ---",
        f"--- spotrun: attempt 2, pod {name}-a2-master-0 ---",
        f"stopped at step {step} (",
        f"(step {step}",
        f"finished {README_STEPS} steps",
    ):
        assert line in output, (line, output[-3000:])
    assert output.index("attempt 1, pod") < output.index("attempt 2, pod"), output[-3000:]


def _runs_local_image(core: client.CoreV1Api, namespace: str, node: str, image: str) -> None:
    """A pod of ``image`` (``imagePullPolicy: Never``) on ``node`` runs to completion."""
    name = f"local-{node}"
    container = {"name": "c", "image": image, "imagePullPolicy": "Never", "command": ["true"]}
    spec = {"nodeName": node, "restartPolicy": "Never", "tolerations": [{"operator": "Exists"}]}
    body = {"metadata": {"name": name}, "spec": {**spec, "containers": [container]}}
    core.create_namespaced_pod(namespace, body)
    seen: list[Any] = [None]

    def done() -> bool:
        seen[0] = core.read_namespaced_pod(name, namespace).status
        return bool(seen[0].phase == "Succeeded")

    try:
        wait_for(f"{image} to run on {node} from its own store", done, timeout=60, interval=1)
    except ClusterError:
        raise AssertionError(f"{image} on {node}: {seen[0]}") from None


@pytest.mark.timeout(2400)
def test_release_from_the_registry_ha_and_the_torchx_walkthrough_through_nth(
    api_client: client.ApiClient,
    cluster: LocalCluster,
    core: client.CoreV1Api,
    namespace: str,
    crd: dict[str, Any],
    real_nodes: list[RealNode],
    shared_claims: dict[str, Path],
    tmp_path: Path,
) -> None:
    registry, version, refs, digests = _release(tmp_path / "release")
    assert not set(refs.values()) & _node_images(core), "a node already holds a pushed ref"
    bare = bare_nodes.add_bare_node(core)
    chart = f"{release_version.chart_repository(registry)}/{CHART_DIR.name}"
    story = real_story.Story(api_client, namespace, len(real_nodes))
    operator = chart_install.Release("spotrun", namespace)
    kc = cluster.kubeconfig
    followers: list[Follower] = []
    try:
        held = _node_images(core, f"kubernetes.io/hostname={bare}")
        assert not [n for n in held if "/spotrun/" in n and "pause" not in n], held
        # helm install spotrun oci://<registry>/spotrun/charts/spotrun --version VERSION
        chart_install.install_operator(
            core, namespace, refs["operator"], operator.name, chart=chart,
            chart_args=("--version", version, "--plain-http"), pull_policy="IfNotPresent",
            replicas=2, node_selector={"kubernetes.io/hostname": bare},
        )  # fmt: skip
        for pod in operator.pods(core):
            assert pod.spec.node_name == bare, pod.spec.node_name
            assert _pulled(core, namespace, pod.metadata.name, refs["operator"])
            assert pod.spec.containers[0].image == refs["operator"]
            assert _from_registry(_image_id(pod), digests["operator"]), _image_id(pod)
        wait_for("a leader", lambda: operator.leader(api_client) is not None, timeout=60)
        listed = chart_install.helm("list", "-n", namespace, "-o", "yaml")
        assert f"chart: spotrun-{version}" in listed, listed

        handle, name = _submit(kc, namespace, refs["trainer"], _pod_template(tmp_path / "t.yaml"))
        env = cli_env(kc)
        followers += [
            Follower([str(BIN / "torchx"), "log", "--tail", f"{handle}/spotrun_lm/0"], env),
            Follower([*spotrun_cmd(), "-n", namespace, "logs", name, "-f"], env),
        ]
        # The node pulls the trainer (GBs) from the registry: a generous wait.
        wait_for(
            "attempt 1 training from the pulled image",
            lambda: int(story.progress(name).get("step", -1)) >= 0,
            timeout=1200,
            interval=2,
        )
        (pod,) = story.pods(name, 1)
        assert _from_registry(_image_id(pod), digests["trainer"]), _image_id(pod)
        assert _pulled(core, namespace, pod.metadata.name, refs["trainer"])
        res = pod.spec.containers[0].resources  # dist.ddp's: cpu=2, memMB=1024 as a limit
        assert parse_quantity((res.requests or {}).get("cpu", 0)) == 2, res
        assert parse_quantity((res.limits or {}).get("memory", 0)) == 1024 * 2**20, res
        status = str(torchx(kc, "status", handle).stdout)
        assert "State: RUNNING" in status and "Num Restarts: 0" in status, status

        # NTH's notice on the node; the leader is killed while the gang stops.
        story.wait_training(name, 1, 40)
        (node,) = story.gang_nodes(name, 1)
        story.nth_notice(node)
        new_leader = _kill_leader(api_client, operator)
        st = story.wait_status(name, "the preemption", lambda s: s.get("preemptions"), 300)
        last = int(story.progress(name).get("step", 0))
        progress = story.wait_training(name, 2, last + 10)
        resumed = story.resumed_from(name, 2)
        print(f"leader now {new_leader}; attempt 2 resumed from {resumed}, at {progress}")
        assert (st["preemptions"], st["failures"]) == (1, 0), st
        assert (st.get("lastPreemption") or {}).get("signal") == "spot-interruption", st
        (pod,) = story.pods(name, 2)
        assert _from_registry(_image_id(pod), digests["trainer"]), _image_id(pod)

        done = story.wait_status(name, "the end", lambda s: s.get("phase") == "Succeeded", 600)
        assert (done["attempt"], done["preemptions"], done["failures"]) == (2, 1, 0), done
        status = str(torchx(kc, "status", handle).stdout)
        assert "State: SUCCEEDED" in status and "Num Restarts: 1" in status, status
        for follower in followers:
            rc, out, err = follower.wait(120)
            assert rc == 0, err
            _check_followed(name, resumed, out)
        # The node that pulled the release still runs the image it holds under its local
        # name (the release's images have ids of their own: release_plan.oci_labels).
        _runs_local_image(core, namespace, pod.spec.node_name, "localhost/spotrun/trainer:dev")
    except (AssertionError, ClusterError):
        for pod in operator.pods(core):
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=200)
            sys.stderr.write(f"\n--- operator pod {pod.metadata.name} ---\n{log}\n")
        raise
    finally:
        for follower in followers:
            follower.stop()
        story.custom.delete_collection_namespaced_custom_object(
            *real_story.TR[:2], namespace, real_story.TR[2]
        )
        story.replace_nodes()  # the interrupted node died: the ASG replaces it
        chart_install.uninstall(operator)
        bare_nodes.remove_bare_node(core, bare)
        _forget_local_tags(registry)
