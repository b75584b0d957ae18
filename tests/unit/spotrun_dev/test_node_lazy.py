"""A lazily pulling node's configs: containerd hands its CRI's snapshots to stargz, and the
snapshotter reaches the harness registry the way containerd's hosts.toml does."""

from __future__ import annotations

import tomllib
from pathlib import Path

from spotrun_dev import node_config, node_lazy


def test_a_lazy_node_snapshots_through_the_stargz_proxy(tmp_path: Path) -> None:
    section = node_lazy.containerd_section(tmp_path)
    text = node_config.containerd_config(tmp_path, "p", Path("/shim"), lazy=section)
    containerd = tomllib.loads(text)
    images = containerd["plugins"]["io.containerd.cri.v1.images"]
    assert images["snapshotter"] == "stargz"
    # Without the CRI's labels the snapshotter cannot tell a layer's registry and
    # reference, and pulls every layer whole.
    assert images["disable_snapshot_annotations"] is False
    proxy = containerd["proxy_plugins"]["stargz"]
    assert proxy["type"] == "snapshot"
    assert proxy["address"] == f"{tmp_path}/{node_lazy.SOCKET}"
    assert proxy["exports"]["enable_remote_snapshot_annotations"] == "true"


def test_an_eager_node_keeps_overlayfs_and_its_config_key(tmp_path: Path) -> None:
    containerd = tomllib.loads(node_config.containerd_config(tmp_path, "p", Path("/shim")))
    images = containerd["plugins"]["io.containerd.cri.v1.images"]
    assert images["snapshotter"] == "overlayfs"
    assert "disable_snapshot_annotations" not in images  # containerd's default: true
    assert "proxy_plugins" not in containerd


def test_the_snapshotter_reaches_the_registry_over_plain_http() -> None:
    config = tomllib.loads(node_lazy.daemon_config())
    hosts = config["resolver"]["host"]
    # The registry under its own address, and as the server of the images built here.
    assert set(hosts) == {node_config.REGISTRY_HOST, node_config.LOCAL_IMAGES_NAMESPACE}
    for host in hosts.values():
        assert host["mirrors"] == [{"host": node_config.REGISTRY_HOST, "insecure": True}]


def test_the_snapshotter_keeps_what_it_fetched_in_memory_and_fetches_no_whole_layer() -> None:
    config = tomllib.loads(node_lazy.daemon_config())
    # Keys of stargz-snapshotter's fs/config/config.go (our daemon refuses any other).
    assert config["http_cache_type"] == config["filesystem_cache_type"] == "memory"
    assert config["no_background_fetch"] is True
    assert config["blob"] == {"chunk_size": 1 << 20}
    assert config["fuse"] == {"attr_timeout": 3600, "entry_timeout": 3600}
