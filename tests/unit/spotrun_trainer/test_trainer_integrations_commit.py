"""spotrun's commit protocol applied to folders another framework wrote
(spotrun_trainer.commit), on real files."""

from __future__ import annotations

from pathlib import Path

import torch

from spotrun_trainer import commit
from spotrun_trainer.checkpoint_io import committed_steps, read_marker, verify


def framework_save(folder: Path, step: int) -> Path:
    """What a Trainer save looks like: files at the top and in a module subfolder."""
    src = folder / f"checkpoint-{step}"
    (src / "1_Pooling").mkdir(parents=True)
    torch.save({"w": torch.full((4,), float(step))}, src / "optimizer.pt")
    (src / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (src / "1_Pooling" / "config.json").write_text("{}")
    return src


def test_commit_folder_moves_the_save_and_writes_a_verifiable_manifest(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    src = framework_save(tmp_path, 7)
    final = commit.commit_folder(src, ckpt, 7, meta={"integration": "test"})
    assert final == ckpt / "step-7" and not src.exists()
    assert verify(final, 7) is None
    marker = read_marker(final)
    assert marker is not None and marker["step"] == 7 and marker["meta"]["integration"] == "test"
    assert {"optimizer.pt", "trainer_state.json", "1_Pooling/config.json", "shared.pt"} == set(
        marker["files"]
    )
    assert [p.name for p in ckpt.iterdir()] == ["step-7"]  # no .tmp- folder left
    # A flipped byte in a subfolder file is caught by the manifest.
    cfg = final / "1_Pooling" / "config.json"
    cfg.write_text("[]")
    assert verify(final, 7) == "1_Pooling/config.json fails its sha256 checksum"


def test_newest_committed_skips_unmarked_folders_and_falls_back_past_damaged_ones(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "ckpt"
    for step in (1, 2):
        commit.commit_folder(framework_save(tmp_path, step), ckpt, step)
    half = ckpt / "step-5"  # a save killed before its marker: never a candidate
    half.mkdir()
    (half / "trainer_state.json").write_text('{"global_step": 5}')
    assert commit.newest_committed(ckpt) == ckpt / "step-2"

    (ckpt / "step-2" / "optimizer.pt").write_bytes(b"truncated")
    assert commit.newest_committed(ckpt) == ckpt / "step-1"
    assert len(list(ckpt.glob("corrupt-step-2.*"))) == 1  # kept for inspection
    assert half.is_dir()  # untouched: not committed, not ours to judge


def test_commit_replaces_a_half_written_folder_of_the_same_step(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    stale = ckpt / "step-3"
    stale.mkdir(parents=True)
    (stale / "junk.bin").write_bytes(b"x")
    commit.commit_folder(framework_save(tmp_path, 3), ckpt, 3)
    assert verify(ckpt / "step-3", 3) is None
    assert not (ckpt / "step-3" / "junk.bin").exists()


def test_prune_keeps_the_newest_and_prepare_drops_interrupted_saves(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    for step in (2, 4, 6, 8):
        commit.commit_folder(framework_save(tmp_path, step), ckpt, step)
    assert commit.prune(ckpt, keep=2) == [2, 4]
    assert [s for s, _ in committed_steps(ckpt)] == [6, 8]
    (ckpt / ".tmp-step-10").mkdir()
    commit.prepare(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-6", "step-8"]
