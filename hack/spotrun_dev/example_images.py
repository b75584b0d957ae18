"""The example workloads' images: built on the trainer image, served by the harness registry.

Each ``examples/<name>/Dockerfile`` is built by the same pipeline as the project images
(``buildah bud --layers``, layer-cached, one build at a time per machine) ``FROM`` the local
trainer build, as ``localhost/spotrun/example-<name>:dev``: the trainer's layers plus the
small layers of the example (its code; for some, its libraries' bytecode).

The real nodes hold the trainer's layers already (their golden containerd root, as a
pre-baked AMI holds a base image) and pull an example image from the harness's registry the
way an EKS node pulls from ECR: each node's containerd resolves the ``localhost`` namespace
through the registry (``node_config.local_images_hosts``). containerd skips a layer whose
unpacked snapshot it holds (by chain id, whatever the blob's compression): a pull fetches the
manifest, the config and the example's own layer only. The examples are pushed with
uncompressed layers (their own are small).

A node started without images (the provisioner's ``registry`` mode) pulls the trainer and
the init container whole: those two are pushed from an OCI layout with zstd layers, which
containerd decompresses at several times gzip's speed (docs/images.md, "Layer compression").
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from spotrun_dev import images, node_lazy, paths, realnodes
from spotrun_dev.node_config import REGISTRY_HOST

EXAMPLES_DIR: Final = paths.REPO_ROOT / "examples"
IMAGE_PREFIX: Final = "example-"
# The project images a bare node pulls for a training pod: the trainer, and the init
# container the training operator gives PyTorchJob workers (it waits for the master).
NODE_PULLED: Final = ("trainer", "pytorch-init")


def example_names(root: Path = EXAMPLES_DIR) -> list[str]:
    """The example folders that have a Dockerfile, i.e. an image."""
    return sorted(d.name for d in root.iterdir() if (d / "Dockerfile").is_file())


def image_ref(name: str) -> str:
    """``localhost/spotrun/example-<name>:dev`` (folder underscores become dashes)."""
    return f"{images.REPO}/{IMAGE_PREFIX}{name.replace('_', '-')}:{images.TAG}"


def registry_ref(ref: str, registry: str = REGISTRY_HOST) -> str:
    """Where the registry serves ``ref``: the ``localhost`` namespace is the registry's root,
    the path the nodes' containerd asks for a ``localhost/...`` image."""
    return f"{registry}/{ref.removeprefix('localhost/')}"


def build_example(name: str, trainer_ref: str) -> str:
    """``buildah bud --layers`` of ``examples/<name>/Dockerfile`` on ``trainer_ref``."""
    ref = image_ref(name)
    cmd = ["buildah", "bud", "--layers", "-f", f"examples/{name}/Dockerfile"]
    cmd += ["--build-arg", f"TRAINER_IMAGE={trainer_ref}", "-t", ref, "."]
    log = images.cache_dir() / "logs" / f"{IMAGE_PREFIX}{name}.log"
    images.run_logged(cmd, log=log, cwd=paths.REPO_ROOT)
    return ref


def push_command(ref: str, registry: str = REGISTRY_HOST) -> list[str]:
    """Plain HTTP, uncompressed layers (their digests are the nodes' diff ids)."""
    dest = f"docker://{registry_ref(ref, registry)}"
    return ["buildah", "push", "--tls-verify=false", "--disable-compression", ref, dest]


def zstd_layout(key: str, image: images.ImageArchive) -> Path:
    """An OCI layout of ``image`` with zstd layers, written once per image id beside its
    archive (the superseded one removed first, as archives are)."""
    cache = images.cache_dir()
    layout = cache / f"{key}-{image.image_id[:16]}.zstd-oci"
    if not (layout / "index.json").is_file():
        for stale in cache.glob(f"{key}-*.zstd-oci*"):
            shutil.rmtree(stale)
        partial = layout.with_name(layout.name + ".partial")
        # An oci: destination reuses only a blob of the same digest, so every layer is
        # compressed here (a registry destination would substitute the gzip blob it
        # already holds for the same layer: containers/image's blob info cache).
        cmd = ["buildah", "push", "--compression-format", "zstd", image.ref, f"oci:{partial}"]
        images.run_logged(cmd, log=cache / "logs" / f"{key}-zstd.log")
        partial.rename(layout)
    return layout


def push_layout_command(layout: Path, ref: str, registry: str = REGISTRY_HOST) -> list[str]:
    """Plain HTTP; the layout's blobs and manifest as they are (``--preserve-digests``
    forbids the substitution above)."""
    dest = f"docker://{registry_ref(ref, registry)}"
    return ["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
            f"oci:{layout}", dest]  # fmt: skip


def push_node_pulled(registry: str = REGISTRY_HOST, lazy: bool = False) -> dict[str, Path]:
    """Push what a node started without images pulls: the trainer and the init container,
    with zstd layers; ``lazy``: the trainer's layers as zstd:chunked, which a lazily pulling
    node mounts (node_lazy.py; pushed by the provisioner in that mode, under the same tag).
    Returns {image: the OCI layout pushed}. Callers hold the machine lock."""
    built = realnodes.built_images()
    pushed: dict[str, Path] = {}
    for key in NODE_PULLED:
        layout = zstd_layout(key, built[key])
        if lazy and key == "trainer":
            layout = node_lazy.esgz_layout(key, built[key], layout)
        log = images.cache_dir() / "logs" / f"{key}-push.log"
        images.run_logged(push_layout_command(layout, built[key].ref, registry), log=log)
        pushed[key] = layout
    return pushed


def ensure_examples(
    names: Sequence[str] | None = None, registry: str = REGISTRY_HOST
) -> dict[str, str]:
    """Build every example image on the local trainer image and push it, and the trainer
    image, to ``registry`` (blobs the registry holds are not sent again). Returns {name:
    local ref} of the examples."""
    built = realnodes.built_images()  # checked once per process
    trainer = built["trainer"].ref
    out: dict[str, str] = {}
    with images.machine_lock():
        # The trainer image itself and the training operator's init container too: a node
        # started without images pulls them (provisioner's registry mode), with zstd
        # layers (docs/images.md, "Layer compression"). The examples' own layers follow.
        push_node_pulled(registry)
        for name in example_names() if names is None else names:
            ref = build_example(name, trainer)
            log = images.cache_dir() / "logs" / f"{IMAGE_PREFIX}{name}-push.log"
            images.run_logged(push_command(ref, registry), log=log)
            out[name] = ref
    return out
