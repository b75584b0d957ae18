"""A node that pulls lazily (the provisioner's ``lazy`` image mode, node_lazy.py) runs the
trainer image without downloading its layers: the real stargz-snapshotter mounts each
layer over the harness registry and fetches what the container reads. Real parts only: the
node's containerd and kubelet, the snapshotter built from its module, the CNCF registry.
Images: ``lazy`` (the trainer converted to zstd:chunked and pushed by the test)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from spotrun_dev import bare_nodes, example_images, images, node_lazy, paths, realnodes
from spotrun_dev.waiting import wait_for
from spotrun_dev.zstd_frames import frame_windows

# What a start does: the trainer's imports, one step of a model.
CODE = (
    "import torch, torch.distributed, transformers\n"
    "model = torch.nn.Linear(64, 64)\n"
    "model(torch.randn(8, 64)).sum().backward()\n"
    "print('lazy start stepped', flush=True)\n"
)
CMD = ["python", "-c", CODE]


def _layers(layout: Path) -> list[str]:
    """The layer digests of the one image of an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def _content(sock: Path) -> set[str]:
    """The blobs in a node's containerd content store (the CRI's namespace)."""
    argv = [str(paths.binary("ctr")), "--address", str(sock), "-n", "k8s.io", "content", "ls",
            "-q"]  # fmt: skip
    return set(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split())


@pytest.fixture
def lazy_node(core: client.CoreV1Api) -> Iterator[tuple[str, Path]]:
    """A bare node that pulls lazily, and the trainer's zstd:chunked layout pushed; the
    tag serves the eager layers again afterwards."""
    with images.machine_lock():
        layout = example_images.push_node_pulled(lazy=True)["trainer"]
    name = bare_nodes.add_bare_node(core, lazy=True)
    try:
        yield name, layout
    finally:
        bare_nodes.remove_bare_node(core, name)
        with images.machine_lock():
            example_images.push_node_pulled(lazy=False)


def test_a_lazy_node_runs_the_trainer_without_downloading_its_layers(
    core: client.CoreV1Api,
    namespace: str,
    built_images: dict[str, images.ImageArchive],
    lazy_node: tuple[str, Path],
) -> None:
    node, layout = lazy_node
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lazy-start"},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {"name": "trainer", "image": built_images["trainer"].ref, "command": CMD}
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)

    def ended() -> bool:
        phase = core.read_namespaced_pod("lazy-start", namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_for("the trainer's start on the lazy node", ended, timeout=300)
    logs = core.read_namespaced_pod_log("lazy-start", namespace)
    phase = core.read_namespaced_pod("lazy-start", namespace).status.phase
    assert phase == "Succeeded", logs[-2000:]
    assert "lazy start stepped" in logs
    # The kubelet pulled the image (its manifest and config), and containerd holds none of
    # its layer blobs: every layer is a remote snapshot, read through the snapshotter.
    held = _content(realnodes.STATE_DIR / node / "containerd.sock")
    layers = _layers(layout)
    assert len(layers) >= 5 and not held & set(layers), sorted(held & set(layers))
    log = (realnodes.STATE_DIR / node / "stargz.log").read_text()
    assert log.count("preparing filesystem mount") >= len(layers), log[-2000:]
    # Every frame the snapshotter opened declared the converter's small window, not the
    # library's 8 MiB (node_lazy.FRAME_WINDOW).
    for digest in layers:
        windows = set(frame_windows(layout / "blobs" / "sha256" / digest.split(":")[1]))
        assert max(windows) == node_lazy.FRAME_WINDOW, (digest, sorted(windows)[-3:])
