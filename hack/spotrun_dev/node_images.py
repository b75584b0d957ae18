"""Images on real nodes: imported once into a "golden" containerd root, then hard-linked.

The trainer image is ~5 GB (torch's CUDA wheels). Importing it into every node's containerd
would cost minutes per node and per replacement node, so the images are imported once per
set of image ids into a machine-level golden root, and each node's containerd root starts
as a hard-linked copy of it (the unpacked layers are read-only: overlayfs never writes to
a lower layer; the two bolt databases are real copies; the layer blobs are discarded).
This is what a node AMI with pre-pulled images gives on EKS; every container still runs
from its image in the node's own containerd, and nothing of the host is mounted into it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from spotrun_dev import paths
from spotrun_dev.waiting import ClusterError, wait_for

log = logging.getLogger("spotrun_dev.node_images")

# The two bolt databases containerd writes: never shared between nodes.
_DATABASES = (
    "io.containerd.metadata.v1.bolt/meta.db",
    "io.containerd.snapshotter.v1.overlayfs/metadata.db",
)


class Archive(Protocol):
    @property
    def ref(self) -> str: ...
    @property
    def archive(self) -> Path: ...
    @property
    def image_id(self) -> str: ...


def machine_cache() -> Path:
    """Machine-level cache shared by every clone (SPOTRUN_MACHINE_CACHE overrides)."""
    return Path(os.environ.get("SPOTRUN_MACHINE_CACHE", "/var/cache/spotrun"))


def runtime_line() -> str:
    """The containerd that writes a golden root: a root is read by the same version only
    (its bolt databases and snapshot layout are containerd's own)."""
    return f"containerd {paths.versions()['CONTAINERD_VERSION']}"


def golden_key(archives: Sequence[Archive]) -> str:
    ids = "\n".join([runtime_line(), *sorted(f"{a.ref}@{a.image_id}" for a in archives)])
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def golden_root(archives: Sequence[Archive]) -> Path:
    """A containerd root holding every image, unpacked; built once per set of image ids,
    from the previous set's root when there is one. One builder at a time, machine-wide:
    two processes building the same set would delete each other's half-imported trees and
    one of them could mark a root READY that lacks an image."""
    parent = machine_cache() / "containerd-golden"
    parent.mkdir(parents=True, exist_ok=True)
    with (parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _golden_root(archives, parent, seeded=True)
        except ClusterError as exc:
            # A seed whose snapshots do not hold together ("parent snapshot ... does not
            # exist") must not stop the cluster: build the set from its archives alone.
            log.warning("golden root from the previous set failed (%s): importing all", exc)
            shutil.rmtree(parent / golden_key(archives), ignore_errors=True)
            return _golden_root(archives, parent, seeded=False)


def _golden_root(archives: Sequence[Archive], parent: Path, seeded: bool) -> Path:
    base = parent / golden_key(archives)
    if (base / "READY").exists():
        return base / "root"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    # An older set's root is the start: its images whose id is unchanged (the 5 GB trainer
    # when only the operator changed) are already unpacked there and are not imported again.
    previous = _newest_ready(base.parent, base) if seeded else None
    have: set[str] = set()
    if previous is not None:
        seed_root(previous / "root", base / "root")
        have = set((previous / "READY").read_text().splitlines())
    with tempfile.TemporaryDirectory(prefix="spotrun-golden-") as tmp:
        sock = Path(tmp) / "containerd.sock"
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(
            f'version = 3\nroot = "{base}/root"\nstate = "{tmp}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",'
            ' "io.containerd.cri.v1.runtime"]\n'
            f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
            '[metrics]\n  address = ""\n'
            # Collect at the first deletion: the discarded layer blobs must leave the disk
            # before this containerd stops. By default a deletion alone schedules no
            # collection (deletion_threshold 0); a seeded build of containerd 2 once waited
            # the whole 120 s below for one.
            '[plugins."io.containerd.gc.v1.scheduler"]\n  deletion_threshold = 1\n'
        )
        with (base / "containerd.log").open("ab") as out:
            proc = subprocess.Popen(
                [str(paths.binary("containerd")), "--config", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for("the golden containerd", sock.exists, timeout=30)
            for a in archives:
                if _ready_line(a) in have:
                    log.info("%s is in the previous golden root", a.ref)
                    continue
                import_archive(sock, a.archive)
            discard_layer_blobs(sock, base / "root")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    lines = [runtime_line(), *map(_ready_line, archives)]
    (base / "READY").write_text("".join(line + "\n" for line in lines))
    # Older image sets cost ~6 GB each; running nodes keep their hard links regardless.
    for old in base.parent.glob("[!.]*"):
        if old != base:
            shutil.rmtree(old, ignore_errors=True)
    return base / "root"


def import_archive(sock: Path, archive: Path, snapshotter: str = "overlayfs") -> None:
    """``ctr images import`` of a docker-archive into the containerd at ``sock`` (the
    namespace the CRI uses), unpacked for the CRI's ``snapshotter``."""
    started = time.monotonic()
    run = subprocess.run(
        [str(paths.binary("ctr")), "--address", str(sock), "-n", "k8s.io", "images", "import",
         "--snapshotter", snapshotter, str(archive)],
        text=True, capture_output=True,
    )  # fmt: skip
    if run.returncode != 0:
        raise ClusterError(f"importing {archive.name}: {run.stderr.strip()}")
    log.info("imported %s in %.1fs", archive.name, time.monotonic() - started)


def discard_layer_blobs(sock: Path, root: Path) -> None:
    """Delete the compressed-or-not layer blobs once every image is unpacked: a node runs
    containers from the unpacked snapshots and needs only each image's manifest and config
    (what containerd's CRI ``discard_unpacked_layers`` does for pulled images). This halves
    the golden root (the trainer's layers would otherwise be kept twice, ~6 GB)."""
    layers: set[str] = set()
    for digest in _ctr(sock, "images", "ls").splitlines()[1:]:
        layers |= _layers_of(sock, digest.split()[2])
    # Only what this import wrote: an image kept from the previous set has none left.
    layers &= set(_ctr(sock, "content", "ls", "-q").split())
    if layers:
        _ctr(sock, "content", "rm", *sorted(layers))
    # The files go with containerd's next garbage collection, which runs on its own
    # schedule: wait for it, or a containerd stopped at once leaves them on disk.
    blobs = root / "io.containerd.content.v1.content" / "blobs"
    files = [blobs / Path(*d.split(":", 1)) for d in layers]
    wait_for("containerd to collect the layer blobs", lambda: not any(map(Path.exists, files)),
             timeout=120)  # fmt: skip
    log.info("discarded %d unpacked layer blobs", len(layers))


def _layers_of(sock: Path, digest: str) -> set[str]:
    """The layer digests under a manifest or an index (every platform it names)."""
    doc = json.loads(_ctr(sock, "content", "get", digest))
    found = {layer["digest"] for layer in doc.get("layers", [])}
    for child in doc.get("manifests", []):
        found |= _layers_of(sock, child["digest"])
    return found


def _ctr(sock: Path, *args: str) -> str:
    run = subprocess.run(
        [str(paths.binary("ctr")), "--address", str(sock), "-n", "k8s.io", *args],
        text=True, capture_output=True,
    )  # fmt: skip
    if run.returncode != 0:
        raise ClusterError(f"ctr {' '.join(args[:2])}: {run.stderr.strip()}")
    return run.stdout


def _ready_line(archive: Archive) -> str:
    return f"{archive.ref} {archive.image_id}"


def _newest_ready(parent: Path, other_than: Path) -> Path | None:
    """The most recently finished golden root besides ``other_than``, if any."""
    done = [
        d for d in parent.glob("[!.]*")
        if d != other_than and (d / "READY").exists()
        and runtime_line() in (d / "READY").read_text().splitlines()
    ]  # fmt: skip
    return max(done, key=lambda d: (d / "READY").stat().st_mtime, default=None)


def seed_root(golden: Path, node_root: Path) -> None:
    """The node's containerd root as a hard-linked copy of the golden one. The copy is
    made beside it and renamed into place, so a copy that fails halfway never passes for a
    seeded root (the next try starts over)."""
    if node_root.exists():
        return
    node_root.parent.mkdir(parents=True, exist_ok=True)
    partial = node_root.with_name(node_root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run = subprocess.run(
        ["cp", "-a", "--link", str(golden), str(partial)], text=True, capture_output=True
    )
    if run.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ClusterError(f"seeding {node_root} from {golden}: {run.stderr.strip()[-2000:]}")
    for rel in _DATABASES:
        src, dst = golden / rel, partial / rel
        if src.exists():
            dst.unlink()
            shutil.copy2(src, dst)
    partial.rename(node_root)
