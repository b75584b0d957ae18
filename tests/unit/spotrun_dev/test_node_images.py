"""A golden containerd root is read by the containerd version that wrote it, only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from spotrun_dev import node_images, paths


@dataclass(frozen=True)
class _Archive:
    ref: str
    archive: Path
    image_id: str


ARCHIVES = [_Archive("localhost/spotrun/trainer:dev", Path("/t.tar"), "a1")]


def _pin(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(paths, "versions", lambda: {"CONTAINERD_VERSION": version})


def _ready(parent: Path, name: str, lines: list[str]) -> Path:
    root = parent / name
    root.mkdir()
    (root / "READY").write_text("".join(line + "\n" for line in lines))
    return root


def test_another_containerd_version_keys_another_golden_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pin(monkeypatch, "v2.4.2")
    key = node_images.golden_key(ARCHIVES)
    assert node_images.golden_key(ARCHIVES) == key
    _pin(monkeypatch, "v2.5.0")
    assert node_images.golden_key(ARCHIVES) != key


def test_a_root_another_containerd_wrote_never_seeds_the_next_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """containerd 1.6's roots carried no runtime line; a seed of another version would be
    opened by a containerd that did not write its databases."""
    _pin(monkeypatch, "v2.4.2")
    line = node_images.runtime_line()
    assert line == "containerd v2.4.2"
    building = tmp_path / "new"
    _ready(tmp_path, "old-1.6", ["localhost/spotrun/trainer:dev a0"])
    assert node_images._newest_ready(tmp_path, building) is None
    same = _ready(tmp_path, "same", [line, "localhost/spotrun/trainer:dev a0"])
    _ready(tmp_path, "other", ["containerd v2.3.0", "localhost/spotrun/trainer:dev a0"])
    assert node_images._newest_ready(tmp_path, building) == same
