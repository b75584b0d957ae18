"""ensure_real_nodes replaces a node whose images or containerd config (its registry hosts)
are older than the harness's, as an AMI update does; it keeps a current one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotrun_dev import images, node_config, node_images, realnodes


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[str]]:
    monkeypatch.setattr(realnodes, "STATE_DIR", tmp_path)
    monkeypatch.setattr(realnodes, "STATE_FILE", tmp_path / "fleet.json")
    built = {
        name: images.ImageArchive(f"localhost/spotrun/{name}:x", tmp_path / name, f"id-{name}")
        for name in ("pause", "operator", "trainer")
    }
    monkeypatch.setattr(realnodes, "built_images", lambda: built)
    monkeypatch.setattr(realnodes, "_ensure_services", lambda state: None)
    monkeypatch.setattr(node_images, "golden_root", lambda archives: tmp_path / "golden")
    monkeypatch.setattr(realnodes, "wait_for", lambda *a, **kw: None)
    calls: dict[str, list[str]] = {"removed": [], "added": []}

    def remove(core: Any, state: realnodes.FleetState, name: str) -> None:
        calls["removed"].append(name)
        del state.nodes[name]
        state.save()  # as remove_node does

    def add(
        core: Any, state: realnodes.FleetState, golden: Path, pause: str, role: str = "spot"
    ) -> realnodes.NodeRecord:
        name = f"{role}-{state.next_index}"
        state.next_index += 1
        record = realnodes.NodeRecord(slot=len(state.nodes), zone="z", role=role)
        state.nodes[name] = record
        calls["added"].append(name)
        return record

    monkeypatch.setattr(realnodes, "remove_node", remove)
    monkeypatch.setattr(realnodes, "add_node", add)
    monkeypatch.setattr(realnodes, "healthy", lambda record: True)
    key = node_images.golden_key(list(built.values()))
    config = node_config.config_key(built["pause"].ref)
    state = realnodes.FleetState(next_index=10)
    state.nodes = {
        "current": realnodes.NodeRecord(0, "z", images=key, config=config),
        "old-config": realnodes.NodeRecord(1, "z", images=key, config=""),
        "old-images": realnodes.NodeRecord(2, "z", images="old", config=config),
        "system": realnodes.NodeRecord(3, "z", images=key, config=config, role="system"),
    }
    state.save()
    return calls


def test_nodes_with_an_older_config_or_images_are_replaced(fleet: dict[str, list[str]]) -> None:
    realnodes.ensure_real_nodes(core=None, count=3)
    assert sorted(fleet["removed"]) == ["old-config", "old-images"]
    assert fleet["added"] == ["spot-10", "spot-11"]
    state = realnodes.FleetState.load()
    assert {r.config for r in state.nodes.values()} == {
        node_config.config_key("localhost/spotrun/pause:x")
    }


def test_a_bare_node_is_neither_replaced_nor_counted(fleet: dict[str, list[str]]) -> None:
    state = realnodes.FleetState.load()
    state.nodes["bare"] = realnodes.NodeRecord(4, "z", images="", config="", role="bare")
    state.save()
    realnodes.ensure_real_nodes(core=None, count=3)
    assert "bare" not in fleet["removed"]
    assert fleet["added"] == ["spot-10", "spot-11"]  # the system node is there, no second one
    assert realnodes.FleetState.load().nodes["bare"].role == "bare"


def test_a_bare_node_is_labelled_and_tainted_as_the_system_group() -> None:
    bare = node_config.RealNode(name="real-system-9", slot=9, zone="z", role="bare")
    system = node_config.RealNode(name="real-system-8", slot=8, zone="z", role="system")
    labels = node_config.node_labels(bare, "r")
    assert labels.pop(node_config.PRELOADED_LABEL) == "false"
    assert labels == node_config.node_labels(system, "r")
    assert node_config.node_taints(bare) == node_config.node_taints(system)


def test_exactly_spot_nodes_acts_on_every_call(fleet: dict[str, list[str]]) -> None:
    """A bench repeats its cases in one process: each case gets exactly the nodes it asks
    for, whatever the case before left (a provisioner's extra node, a node lost)."""
    realnodes.exactly_spot_nodes(None, 2)
    assert realnodes.FleetState.load().count("spot") == 2
    state = realnodes.FleetState.load()
    current = state.nodes["current"]
    state.nodes["spot-extra"] = realnodes.NodeRecord(8, "z", images=current.images,
                                                     config=current.config)  # fmt: skip
    state.save()
    realnodes.exactly_spot_nodes(None, 2)
    assert realnodes.FleetState.load().count("spot") == 2
    assert "spot-extra" in fleet["removed"]
    realnodes.exactly_spot_nodes(None, 3)
    assert realnodes.FleetState.load().count("spot") == 3


def test_exactly_spot_nodes_keeps_the_oldest_by_index_not_by_string(
    fleet: dict[str, list[str]],
) -> None:
    state = realnodes.FleetState.load()
    current = state.nodes["current"]
    names = ("real-spot-99", "real-spot-100", "real-spot-101")
    state.nodes = {
        name: realnodes.NodeRecord(i, "z", images=current.images, config=current.config)
        for i, name in enumerate(names)
    }
    state.save()
    realnodes.exactly_spot_nodes(core=None, wanted=2)
    assert fleet["removed"] == ["real-spot-101"]
