"""The harness registry's storage is kept machine-wide, so it must not grow without bound:
before the registry serves, the release test's throwaway ``e2e-*`` repositories but the
newest go and ``registry garbage-collect --delete-untagged`` drops every blob no tag names
(node_services.collect_garbage). Run on the real registry binary, on a folder and a
loopback port of the test's own, with the harness's real images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from spotrun_dev import example_images, images, node_services, prometheus

BLOBS = Path("docker/registry/v2/blobs")


def _blobs(storage: Path) -> set[str]:
    return {p.parent.name for p in (storage / BLOBS).rglob("data")}


def _push(ref: str, registry: str) -> None:
    subprocess.run(example_images.push_command(ref, registry), check=True, capture_output=True)


def test_garbage_collection_keeps_tagged_images_and_drops_throwaway_ones(
    tmp_path: Path, built_images: dict[str, images.ImageArchive]
) -> None:
    storage, state = tmp_path / "storage", tmp_path / "state"
    state.mkdir()
    host = f"127.0.0.1:{prometheus.free_port()}"
    pid = node_services.start_registry(state, storage, host)  # empty: nothing to collect
    try:
        _push(built_images["pause"].ref, host)  # <host>/spotrun/pause
        kept = _blobs(storage)
        _push(built_images["pytorch-init"].ref, f"{host}/e2e-older")
        _push(built_images["pause"].ref, f"{host}/e2e-newest")
    finally:
        node_services.stop(pid)
    throwaway = _blobs(storage) - kept
    assert throwaway, "the older throwaway image added no blob of its own"
    repos = storage / "docker/registry/v2/repositories"
    for age, name in enumerate(("e2e-older", "e2e-newest")):  # mtimes apart, whatever the clock
        os.utime(repos / name, (1_000_000 + age, 1_000_000 + age))

    node_services.collect_garbage(state / "registry.yaml", storage, state / "gc.log")

    assert _blobs(storage) == kept, (state / "gc.log").read_text()[-2000:]
    assert sorted(p.name for p in repos.iterdir()) == ["e2e-newest", "spotrun"]
