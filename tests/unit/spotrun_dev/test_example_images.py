"""What a bare node pulls is pushed with zstd layers, compressed once per image id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotrun_dev import example_images, images

TRAINER = images.ImageArchive("localhost/spotrun/trainer:dev", Path("/t.tar"), "a" * 64)


def _builder(calls: list[list[str]]) -> Any:
    def run_logged(cmd: list[str], log: Path | None = None, **_: Any) -> str:
        calls.append(list(cmd))
        dest = Path(cmd[-1].removeprefix("oci:"))
        dest.mkdir(parents=True)
        (dest / "index.json").write_text("{}")
        return ""

    return run_logged


def test_the_layout_is_written_once_per_image_id_and_replaces_the_last(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(images, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(images, "run_logged", _builder(calls))
    stale = tmp_path / "trainer-0000000000000000.zstd-oci"
    stale.mkdir()
    layout = example_images.zstd_layout("trainer", TRAINER)
    assert layout == tmp_path / "trainer-aaaaaaaaaaaaaaaa.zstd-oci" and layout.is_dir()
    assert not stale.exists()  # the superseded image's layout goes (~3 GB)
    assert calls == [["buildah", "push", "--compression-format", "zstd", TRAINER.ref,
                      f"oci:{layout}.partial"]]  # fmt: skip
    assert example_images.zstd_layout("trainer", TRAINER) == layout
    assert len(calls) == 1  # the same image id: nothing compressed again


def test_the_layout_goes_to_the_registry_as_it_is(tmp_path: Path) -> None:
    cmd = example_images.push_layout_command(tmp_path, TRAINER.ref, "10.250.0.1:5000")
    assert cmd[:2] == ["skopeo", "copy"]
    assert "--preserve-digests" in cmd  # no substitution of a gzip blob the registry holds
    assert cmd[-2:] == [f"oci:{tmp_path}", "docker://10.250.0.1:5000/spotrun/trainer:dev"]
