"""Lazy pulling on a real node: the provisioner's ``lazy`` image mode.

A node started without images pulls the trainer image whole before the container starts
(``registry`` mode: 16-29 s of the 6.4 GB on this machine, docs/recovery.md). A lazily
pulling node mounts each layer over the registry instead and fetches a file's chunks when
they are first read: the container starts once the layers' tables of contents are in, and
a start reads about a sixth of the image (docs/images.md, "Lazy pulling"). This is
stargz-snapshotter (containerd's sub-project, what SOCI on EKS and GKE's image streaming
also do): a containerd proxy snapshotter, its FUSE mounts in the node's mount namespace,
and the trainer's layers converted to zstd:chunked, the eStargz table of contents in zstd
(``spotrun-esgz``, hack/gomod/stargz). Layers without a table of contents (the sandbox, the
init container) are pulled whole by the same snapshotter.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

from spotrun_dev import images, node_host, paths
from spotrun_dev.node_config import LOCAL_IMAGES_NAMESPACE, REGISTRY_HOST, RealNode
from spotrun_dev.waiting import wait_for

SOCKET: Final = "stargz.sock"
# The files a start of the trainer reads, listed in its image (trainer/Dockerfile's
# precompile step): each layer holds those of them it has first, fetched at its mount.
STARTUP_FILES: Final = "/opt/spotrun/startup-files.txt"
CONFIG: Final = "stargz.toml"
# The window every zstd frame of a converted layer declares. The snapshotter's decoder
# allocates it for each frame it opens, i.e. for each file a start reads: with the
# converter library's default, 8 MiB, clearing it was most of the snapshotter's CPU
# (docs/images.md). A frame holds one small file or one chunk of a larger one; restic
# measured 512 KiB against 8 MiB at about 1 % of size (restic/restic#4181), the trainer's
# layers grew 2.2 %.
FRAME_WINDOW: Final = 512 << 10
# A listed file up to this size goes first whole; a larger one is read in chunks when the
# start touches it. The libraries of 16-128 MiB a start maps are mostly read (fincore after
# a start: libnvrtc 103 of 115 MB, libnvJitLink 99 of 117, libtorch_python 33 of 35), the
# larger ones partly (libtorch_cpu 244 of 448, libtorch_cuda 103 of 520).
PRIORITIZED_MAX: Final = 128 << 20


def containerd_section(state: Path) -> str:
    """The proxy snapshotter in a node's containerd config (stargz-snapshotter's
    docs/overview.md, for containerd 2), and the platform its transfer service unpacks
    for it (``ctr images import --snapshotter stargz`` of the sandbox image)."""
    return f"""[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "stargz"
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "{state}/{SOCKET}"
    [proxy_plugins.stargz.exports]
      root = "{state}/stargz/"
      enable_remote_snapshot_annotations = "true"
"""


# How the snapshotter fetches and keeps what a start reads (stargz-snapshotter
# fs/config/config.go; measured with bench/lazy_start.py, docs/images.md "Lazy pulling"):
# - both caches in memory: on disk (the default) every fetched range is written to a file
#   and read back, which cost a start 7 s of this machine's 2 cores; in memory they hold
#   what the containers have read, compressed and not (2.2 GB after minutes of training);
# - no background fetch of whole layers: with the caches in memory it would hold the
#   6.4 GB image twice, and it shares the cores with the start it should serve; the
#   container reads the rest of the image over the registry when it needs it;
# - fetches of 1 MiB, not 50 kB, from the registry;
# - FUSE attributes and lookups cached for an hour: a layer's files never change.
FETCHING: Final = """no_background_fetch = true
http_cache_type = "memory"
filesystem_cache_type = "memory"
[blob]
chunk_size = 1048576
[fuse]
attr_timeout = 3600
entry_timeout = 3600
"""


def daemon_config(registry: str = REGISTRY_HOST) -> str:
    """The snapshotter's own config: how it fetches (:data:`FETCHING`), and the harness
    registry over plain HTTP, under its own address and as the server of the
    ``localhost`` namespace (as the nodes' hosts.toml)."""
    hosts = (registry, LOCAL_IMAGES_NAMESPACE)
    return FETCHING + "".join(
        f'[[resolver.host."{h}".mirrors]]\n  host = "{registry}"\n  insecure = true\n'
        for h in hosts
    )


def start_daemon(node: RealNode, node_dir: Path, holder: int) -> int:
    """The node's snapshotter, in its mount namespace (containerd must see its mounts);
    returns its pid once it listens."""
    (node_dir / CONFIG).write_text(daemon_config())
    sock = node_dir / SOCKET
    argv = [str(paths.binary("containerd-stargz-grpc")), "--address", str(sock),
            "--config", str(node_dir / CONFIG), "--root", str(node_dir / "stargz")]  # fmt: skip
    pid = node_host.spawn(node, argv, node_dir / "stargz.log", holder)
    wait_for(f"{node.name}'s stargz snapshotter", sock.exists, timeout=30)
    return pid


def esgz_layout(key: str, image: images.ImageArchive, source: Path) -> Path:
    """``source`` (an OCI layout of ``image``) converted to zstd:chunked layers, the files
    the image's STARTUP_FILES lists first in each layer; written once per image id,
    converter and settings beside it (the superseded one removed first)."""
    cache = images.cache_dir()
    converter = paths.binary("spotrun-esgz")
    stamp = (converter.parent / f".{converter.name}.version").read_text().strip()
    settings = f"w{FRAME_WINDOW}-p{PRIORITIZED_MAX}"
    layout = cache / f"{key}-{image.image_id[:16]}-{stamp}-{settings}.esgz-oci"
    if not (layout / "index.json").is_file():
        for stale in cache.glob(f"{key}-*.esgz-oci*"):
            shutil.rmtree(stale)
        partial = layout.with_name(layout.name + ".partial")
        cmd = [str(converter), "-src", str(source), "-dst", str(partial), "-tmp", str(cache),
               "-prioritized", STARTUP_FILES, "-prioritized-max", str(PRIORITIZED_MAX),
               "-window", str(FRAME_WINDOW)]  # fmt: skip
        images.run_logged(cmd, log=cache / "logs" / f"{key}-esgz.log")
        partial.rename(layout)
    return layout
