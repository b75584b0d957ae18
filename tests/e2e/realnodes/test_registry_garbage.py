"""The harness registry's storage is kept machine-wide, so it must not grow without bound:
before the registry serves, the release test's throwaway ``e2e-*`` repositories but the
newest go and ``registry garbage-collect --delete-untagged`` drops every blob no tag names
(node_services.collect_garbage). Run on the real registry binary, on a folder and a
loopback port of the test's own, with the harness's real images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from spotrun_dev import images, node_services, paths, prometheus
from spotrun_dev.node_config import registry_config
from spotrun_dev.waiting import wait_for

BLOBS = Path("docker/registry/v2/blobs")


def _blobs(storage: Path) -> set[str]:
    return {p.parent.name for p in (storage / BLOBS).rglob("data")}


def _push(ref: str, dest: str) -> None:
    subprocess.run(
        ["buildah", "push", "--tls-verify=false", "--disable-compression", ref,
         f"docker://{dest}"],
        check=True, capture_output=True,
    )  # fmt: skip


def test_garbage_collection_keeps_tagged_images_and_drops_throwaway_ones(
    tmp_path: Path, built_images: dict[str, images.ImageArchive]
) -> None:
    storage, state = tmp_path / "storage", tmp_path / "state"
    state.mkdir()
    host = f"127.0.0.1:{prometheus.free_port()}"
    cfg = state / "registry.yaml"
    cfg.write_text(yaml.safe_dump(registry_config(storage, host)))
    serve = [str(paths.binary("registry")), "serve", str(cfg)]
    with (state / "serve.log").open("w") as log:
        proc = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("the test's registry", lambda: node_services.registry_ready(host), timeout=30)
        _push(built_images["pause"].ref, f"{host}/spotrun/pause:dev")
        kept = _blobs(storage)
        _push(built_images["pytorch-init"].ref, f"{host}/e2e-older/pytorch-init:0.1.0")
        _push(built_images["pause"].ref, f"{host}/e2e-newest/pause:0.1.0")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    throwaway = _blobs(storage) - kept
    assert throwaway, "the older throwaway image added no blob of its own"
    repos = storage / "docker/registry/v2/repositories"
    for age, name in enumerate(("e2e-older", "e2e-newest")):  # mtimes apart, whatever the clock
        os.utime(repos / name, (1_000_000 + age, 1_000_000 + age))

    node_services.collect_garbage(cfg, storage, state / "gc.log")

    assert _blobs(storage) == kept, (state / "gc.log").read_text()[-2000:]
    assert sorted(p.name for p in repos.iterdir()) == ["e2e-newest", "spotrun"]
