"""Fenced checkpoints in process, on real files: the fence a new attempt writes, the commit
an older attempt is refused, the checkpoint that lands after the fence and is never loaded,
and no fencing at all outside the operator."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spotrun_api import contract
from spotrun_trainer import commit, fencing
from spotrun_trainer.checkpoint import (
    CheckpointFenced,
    CheckpointHooks,
    CheckpointManager,
    CheckpointSettings,
    committed_steps,
    verify,
)
from spotrun_trainer.checkpoint_io import read_marker, write_json
from spotrun_trainer.core import TrainerCore, checkpoint_settings, integration_config
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.integrations.hf import SpotrunCallback
from spotrun_trainer.launcher import decide_exit
from spotrun_trainer.s3mirror import S3Mirror
from spotrun_trainer.state import ModelState, TrainProgress


class Parts:
    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = nn.Linear(4, 2)
        self.progress = TrainProgress()
        self.shared: dict[str, Any] = {"model": ModelState(self.model), "progress": self.progress}

    def at(self, step: int) -> Parts:
        """The state after ``step`` steps (the weights say which step they are)."""
        with torch.no_grad():
            self.model.weight.fill_(float(step))
        self.progress.step = step
        return self


def manager(folder: Path, epoch: int | None, **kw: Any) -> CheckpointManager:
    hooks = kw.pop("hooks", None)
    m = CheckpointManager(folder, CheckpointSettings(epoch=epoch, keep_best=False, **kw),
                          hooks=hooks)  # fmt: skip
    return m


def save(m: CheckpointManager, step: int) -> None:
    m.save(step, Parts().at(step).shared, {})
    m.wait()


def steps(folder: Path) -> list[int]:
    return [s for s, _ in committed_steps(folder)]


def epoch_of(folder: Path, step: int) -> Any:
    marker = read_marker(folder / f"step-{step}")
    assert marker is not None
    return marker.get(contract.MANIFEST_EPOCH)


def fence_json(folder: Path, epoch: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "fence" / f"{epoch}.json").read_text())
    return data


def tmp_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def test_a_new_attempt_writes_its_fence_before_it_loads(tmp_path: Path) -> None:
    old = manager(tmp_path, 1)
    old.prepare()
    save(old, 1)
    save(old, 2)
    assert epoch_of(tmp_path, 2) == 1  # every commit records the attempt that wrote it
    assert fence_json(tmp_path, 1)["accepted"] == []

    new = manager(tmp_path, 2)
    new.prepare()
    data = fence_json(tmp_path, 2)
    assert data["format"] == contract.FENCE_FORMAT_VERSION and data["epoch"] == 2
    digest = hashlib.sha256((tmp_path / "step-2" / "COMMITTED").read_bytes()).hexdigest()
    assert [(a["step"], a["epoch"]) for a in data["accepted"]] == [(1, 1), (2, 1)]
    assert data["accepted"][1]["manifest_sha256"] == digest
    assert sorted(p.name for p in (tmp_path / "fence").iterdir()) == ["1.json", "2.json"]
    before = (tmp_path / "fence" / "2.json").read_bytes()
    new.prepare()  # once per attempt: a second start-up keeps the fence it wrote
    assert (tmp_path / "fence" / "2.json").read_bytes() == before

    loaded = new.load(Parts(seed=1).shared, {})
    assert loaded is not None and loaded.step == 2


def test_an_older_attempt_is_refused_before_it_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written: list[int] = []
    old = manager(tmp_path, 1, hooks=CheckpointHooks(after_write=written.append))
    old.prepare()
    save(old, 1)
    manager(tmp_path, 2).prepare()
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointFenced) as refused:
        old.save(2, Parts().at(2).shared, {})
    assert refused.value.code == contract.EXIT_FENCED == 87
    assert written == [1]  # step 2's files were never written
    assert "commit of step 2 refused: fenced by attempt 2" in caplog.text
    assert steps(tmp_path) == [1] and tmp_folders(tmp_path) == []
    # An attempt that starts after a newer one moved the fence does not start at all.
    with pytest.raises(CheckpointFenced, match="attempt 1 cannot start: fenced by attempt 2"):
        manager(tmp_path, 1).prepare()


@pytest.mark.parametrize(
    ("async_save", "start"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_a_commit_is_refused_when_the_fence_moves_during_the_save(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    async_save: bool,
    start: bool,
) -> None:
    """The fence moves between the ranks' files and the manifest: alone (the commit's own
    check refuses), or with the new attempt's whole start-up, which also removes the older
    attempt's temp folder."""
    folder = tmp_path / "ckpt"
    moved: list[int] = []

    def new_attempt_starts(step: int) -> None:
        if start:
            manager(folder, 2).prepare()
        else:
            fencing.advance(folder, 2)
        moved.append(step)

    old = manager(folder, 1, async_save=async_save,
                  hooks=CheckpointHooks(before_commit=new_attempt_starts))  # fmt: skip
    old.prepare()
    manifests: list[Path] = []

    def spied(path: Path, obj: Any) -> None:
        manifests.append(path)
        write_json(path, obj)

    monkeypatch.setattr(commit, "write_json", spied)
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointFenced):
        old.save(3, Parts().at(3).shared, {})
        old.wait()
    assert manifests == []  # refused before its manifest was written
    assert moved == [3] and "commit of step 3 refused: fenced by attempt 2" in caplog.text
    assert steps(folder) == [] and tmp_folders(folder) == []  # its temp folder is gone
    assert fencing.refused_by(folder, 1) == 2

    # The loop's next boundary: every rank agrees to leave with EXIT_FENCED.
    cfg = integration_config({}, folder, {})
    core = TrainerCore(cfg, DistContext(0, 1, 0, torch.device("cpu"), None),
                       {contract.ENV_ATTEMPT: "1"}, own_reporter=False)  # fmt: skip
    with pytest.raises(CheckpointFenced) as left:
        core.agree(4, due=False)
    assert left.value.code == contract.EXIT_FENCED and left.value.fence_epoch == 2


def test_the_last_check_just_before_the_rename_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = manager(tmp_path, 1)
    old.prepare()

    def manifest_then_fence(path: Path, obj: Any) -> None:  # the fence moves meanwhile
        write_json(path, obj)
        fencing.advance(tmp_path, 2)

    monkeypatch.setattr(commit, "write_json", manifest_then_fence)
    with pytest.raises(CheckpointFenced):
        old.save(6, Parts().at(6).shared, {})
    assert steps(tmp_path) == [] and tmp_folders(tmp_path) == []


def test_a_checkpoint_renamed_after_the_fence_moved_is_never_loaded_and_is_pruned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ckpt"

    def fence_moves(step: int) -> None:  # the old committer passed its last check
        if step == 5:
            fencing.advance(folder, 2)

    old = manager(folder, 1, hooks=CheckpointHooks(before_rename=fence_moves), keep=5)
    old.prepare()
    for step in (1, 2, 5):
        save(old, step)
    assert steps(folder) == [1, 2, 5] and epoch_of(folder, 5) == 1  # it landed, late

    new = manager(folder, 2, keep=2)
    new.prepare()
    with caplog.at_level(logging.WARNING):
        loaded = new.load(Parts(seed=1).shared, {})
    assert loaded is not None and loaded.step == 2  # step-5 is newer, and never loaded
    assert "skipping step-5: written by attempt 1 after attempt 2 moved the fence" in caplog.text

    # The attempt after it does not accept it either: only what the fence accepted.
    later = tmp_path / "copy"
    shutil.copytree(folder, later)
    assert [a.step for a in fencing.advance(later, 3).accepted] == [1, 2]

    # Retention counts only what may load: without the fence keep=2 would keep 3 and 5.
    save(new, 3)
    assert steps(folder) == [2, 3]
    assert sorted(p.name for p in (folder / "fence").iterdir()) == ["1.json", "2.json"]


def test_an_older_attempt_never_replaces_a_newer_ones_checkpoint(tmp_path: Path) -> None:
    new = manager(tmp_path, 2)

    def newer_commits_the_same_step(step: int) -> None:
        fencing.advance(tmp_path, 2)
        save(new, step)

    old = manager(tmp_path, 1, hooks=CheckpointHooks(before_rename=newer_commits_the_same_step))
    old.prepare()
    with pytest.raises(CheckpointFenced):
        old.save(4, Parts().at(4).shared, {})
    assert epoch_of(tmp_path, 4) == 2 and verify(tmp_path / "step-4", 4) is None
    assert tmp_folders(tmp_path) == []


def test_without_an_attempt_nothing_is_fenced(tmp_path: Path) -> None:
    ck = integration_config({}, tmp_path, {}).checkpoint
    assert checkpoint_settings(ck, env={}).epoch is None
    assert checkpoint_settings(ck, env={contract.ENV_ATTEMPT: "3"}).epoch == 3
    fencing.advance(tmp_path, 5)  # a fence another run left: not looked at
    m = manager(tmp_path, None)
    m.prepare()
    save(m, 1)
    marker = read_marker(tmp_path / "step-1")
    assert marker is not None and contract.MANIFEST_EPOCH not in marker
    assert (tmp_path / ".tmp-step-2").name == commit.tmp_dir(tmp_path, 2).name  # old layout
    loaded = m.load(Parts(seed=1).shared, {})
    assert loaded is not None and loaded.step == 1
    assert sorted(p.name for p in (tmp_path / "fence").iterdir()) == ["5.json"]


def test_framework_commits_and_resume_are_fenced(tmp_path: Path) -> None:
    """The Hugging Face path: commit_folder, newest_committed and the callback's resume."""
    ckpt = tmp_path / "ckpt"

    def framework_save(step: int) -> Path:
        src = tmp_path / f"checkpoint-{step}"
        src.mkdir()
        (src / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        return src

    commit.prepare(ckpt, 1)
    commit.commit_folder(framework_save(1), ckpt, 1, epoch=1)
    commit.prepare(ckpt, 2)
    src = framework_save(2)
    with pytest.raises(CheckpointFenced):
        commit.commit_folder(src, ckpt, 2, epoch=1)
    assert not src.exists() and steps(ckpt) == [1] and tmp_folders(ckpt) == []
    assert commit.newest_committed(ckpt, 2) == ckpt / "step-1"
    callback = SpotrunCallback(ckpt, env={contract.ENV_ATTEMPT: "1"})
    with pytest.raises(CheckpointFenced, match="attempt 1 cannot start"):
        callback.resume_path()


def test_a_checkpoint_restored_from_the_mirror_is_accepted(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    old = manager(remote, 1)
    old.prepare()
    save(old, 4)

    def restore(directory: Path) -> int:
        shutil.copytree(remote / "step-4", directory / "step-4")
        return 4

    new = manager(local, 2, hooks=CheckpointHooks(restore_missing=restore))
    new.prepare()  # an empty folder (another zone): the fence accepts nothing
    loaded = new.load(Parts(seed=1).shared, {})
    assert loaded is not None and loaded.step == 4
    assert [a["step"] for a in fence_json(local, 2)["accepted"]] == [4]


class FakeS3:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def upload_file(self, path: str, bucket: str, key: str) -> None:
        self.keys.append(key)


def test_the_mirror_skips_a_checkpoint_the_fence_rejects(tmp_path: Path) -> None:
    old = manager(tmp_path, 1)
    old.prepare()
    save(old, 1)
    manager(tmp_path, 2).prepare()
    (tmp_path / "step-1").rename(tmp_path / "step-7")  # stands in for a late rename
    marker = read_marker(tmp_path / "step-7")
    assert marker is not None
    marker["step"] = 7
    (tmp_path / "step-7" / "COMMITTED").write_text(json.dumps(marker))
    s3 = FakeS3()
    mirror = S3Mirror("s3://bucket/run", client=s3)
    mirror.upload(tmp_path / "step-7")
    assert s3.keys == []
    save(manager(tmp_path, 2), 8)
    mirror.upload(tmp_path / "step-8")
    assert s3.keys[-1] == "run/step-8/COMMITTED"


def test_the_contract_fence_and_exit_code() -> None:
    code = contract.EXIT_FENCED
    assert code not in (contract.EXIT_DONE, contract.EXIT_STOPPED, contract.EXIT_PEER_LOST)
    assert code not in (1, 2, 126, 127, 137, 143, 255) and not 64 <= code <= 78 and code < 126
    fence = contract.Fence(3, (contract.AcceptedCheckpoint(10, 2, "ab"),), "2025-01-01T00:00:00Z")
    assert contract.Fence.from_json(json.loads(json.dumps(fence.to_json()))) == fence
    assert fence.accepts(10, 2, "ab") and not fence.accepts(10, 2, "cd")
    assert fence.accepts(11, 3, "") and not fence.accepts(11, 2, "")
    assert contract.parse_fence_file(contract.fence_file_name(3)) == 3
    assert contract.parse_fence_file(".tmp-3.json") is None
    with pytest.raises(ValueError):
        contract.Fence.from_json({"format": 99, "epoch": 1})
    # launcher mode: a fenced worker makes the pod exit EXIT_FENCED, not fail
    assert decide_exit(1, [code], 2) == code
    assert decide_exit(1, [code, contract.EXIT_PEER_LOST], 2) == code
    assert decide_exit(1, [code, 143], 2) == code
    assert decide_exit(1, [code, 1], 2) == 1
