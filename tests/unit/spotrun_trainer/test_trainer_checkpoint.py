"""CheckpointManager in-process: commit protocol, verification, fallback, retention, async."""

from __future__ import annotations

import copy
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from trainer_helpers import assert_bitwise_equal, poll_until

from spotrun_api import contract
from spotrun_trainer.checkpoint import (
    CheckpointError,
    CheckpointHooks,
    CheckpointManager,
    CheckpointSettings,
    RankPlace,
    committed_steps,
    verify,
)
from spotrun_trainer.state import ModelState, RNGState, TrainProgress


class Parts:
    """A tiny model + optimizer + counters, the shape the trainer hands the manager."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = nn.Linear(8, 4)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        self.progress = TrainProgress()
        self.shared: dict[str, Any] = {
            "model": ModelState(self.model), "optimizer": self.opt, "progress": self.progress,
        }  # fmt: skip
        self.per_rank: dict[str, Any] = {"rng": RNGState()}

    def train_step(self) -> None:
        loss = self.model(torch.randn(2, 8)).square().mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.progress.step += 1

    def state(self) -> dict[str, Any]:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.opt.state_dict()),
            "step": self.progress.step,
        }


def _manager(
    directory: Path,
    settings: CheckpointSettings | None = None,
    *,
    place: RankPlace | None = None,
    hooks: CheckpointHooks | None = None,
) -> CheckpointManager:
    m = CheckpointManager(directory, settings, place=place, hooks=hooks)
    m.prepare()
    return m


def test_round_trip_restores_every_part(tmp_path: Path) -> None:
    a = Parts()
    for _ in range(3):
        a.train_step()
    m = _manager(tmp_path)
    m.save(a.progress.step, a.shared, a.per_rank)
    info = m.wait()
    assert info is not None and info.step == 3 and info.bytes > 0
    expected, expected_draw = a.state(), torch.rand(4)

    b = Parts(seed=1)
    loaded = _manager(tmp_path).load(b.shared, b.per_rank)
    assert loaded is not None and loaded.step == 3
    assert_bitwise_equal(expected, b.state())
    assert torch.equal(torch.rand(4), expected_draw), "torch RNG restored"
    marker = json.loads((tmp_path / "step-3" / contract.COMMIT_MARKER).read_text())
    assert set(marker["files"]) == {"shared.pt", "rank-0.pt"}
    assert all(len(e["sha256"]) == 64 for e in marker["files"].values())


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "marker", "missing-file"])
def test_damaged_newest_falls_back_to_previous(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = Parts()
    m = _manager(tmp_path, CheckpointSettings(keep=5))
    states = {}
    for _ in range(2):
        a.train_step()
        m.save(a.progress.step, a.shared, a.per_rank)
        states[a.progress.step] = a.state()
    shared = tmp_path / "step-2" / "shared.pt"
    if damage == "bitflip":
        raw = bytearray(shared.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        shared.write_bytes(bytes(raw))
    elif damage == "truncate":
        with open(shared, "r+b") as f:
            f.truncate(10)
    elif damage == "marker":
        (tmp_path / "step-2" / contract.COMMIT_MARKER).write_text("{not json")
    else:
        shared.unlink()
    assert verify(tmp_path / "step-2", 2) is not None

    b = Parts(seed=1)
    with caplog.at_level(logging.ERROR):
        loaded = _manager(tmp_path).load(b.shared, b.per_rank)
    assert loaded is not None and loaded.step == 1
    assert_bitwise_equal(states[1], b.state())
    assert "step-2 is damaged" in caplog.text and "falling back" in caplog.text
    assert not (tmp_path / "step-2").exists(), "damaged folder quarantined"
    assert list(tmp_path.glob("corrupt-step-2.*"))


def test_half_written_and_unmarked_folders_are_never_loaded(tmp_path: Path) -> None:
    a = Parts()
    a.train_step()
    m = _manager(tmp_path)
    m.save(1, a.shared, a.per_rank)
    # What a SIGKILL mid-save leaves: a temp folder with data but no manifest...
    tmp = tmp_path / ".tmp-step-5"
    tmp.mkdir()
    (tmp / "shared.pt").write_bytes(b"partial")
    # ...and a step-named folder without a marker (never made by us, but never trusted).
    (tmp_path / "step-9").mkdir()
    torch.save({"model": {}}, tmp_path / "step-9" / "shared.pt")
    assert [s for s, _ in committed_steps(tmp_path)] == [1]

    b = Parts(seed=1)
    m2 = _manager(tmp_path)
    assert not tmp.exists(), "prepare() removes leftovers of interrupted saves"
    loaded = m2.load(b.shared, b.per_rank)
    assert loaded is not None and loaded.step == 1


def test_keeps_last_k_and_the_best(tmp_path: Path) -> None:
    a = Parts()
    m = _manager(tmp_path, CheckpointSettings(keep=2, keep_best=True))
    metrics = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: None}
    for step, metric in metrics.items():
        a.train_step()
        m.save(step, a.shared, a.per_rank, metric=metric)
    assert [s for s, _ in committed_steps(tmp_path)] == [2, 4, 5]
    assert not list(tmp_path.glob(".deleting-*"))


def test_same_step_saved_again_replaces_the_old_copy(tmp_path: Path) -> None:
    a = Parts()
    m = _manager(tmp_path)
    m.save(1, a.shared, a.per_rank)
    a.train_step()
    m.save(1, a.shared, a.per_rank)
    b = Parts(seed=1)
    _manager(tmp_path).load(b.shared, b.per_rank)
    assert_bitwise_equal(a.state()["model"], b.state()["model"])


def test_async_save_snapshots_state_at_call_time(tmp_path: Path) -> None:
    a = Parts()
    a.train_step()
    release = threading.Event()
    m = _manager(
        tmp_path,
        CheckpointSettings(async_save=True),
        hooks=CheckpointHooks(before_commit=lambda step: release.wait(60)),
    )
    expected = a.state()
    m.save(1, a.shared, a.per_rank)
    assert m.in_flight, "the write runs in the background"
    for _ in range(3):  # training goes on while the save is in flight
        a.train_step()
    release.set()
    assert m.wait() is not None
    b = Parts(seed=1)
    _manager(tmp_path).load(b.shared, b.per_rank)
    assert_bitwise_equal(expected, b.state())


def test_async_snapshot_keeps_tied_weights_shared(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(1000, 64)
            self.head = nn.Linear(64, 1000, bias=False)
            self.head.weight = self.emb.weight

    model = Tied()
    sizes = {}
    for async_save in (False, True):
        m = _manager(tmp_path / str(async_save), CheckpointSettings(async_save=async_save))
        m.save(1, {"model": ModelState(model)}, {})
        info = m.wait()
        assert info is not None
        sizes[async_save] = (info.path / "shared.pt").stat().st_size
    weight_bytes = 1000 * 64 * 4
    assert sizes[False] < 1.5 * weight_bytes, "torch.save writes a tied weight once"
    assert abs(sizes[True] - sizes[False]) < 4096, "so must the async snapshot"


def test_async_allows_one_save_in_flight(tmp_path: Path) -> None:
    a = Parts()
    gate = {1: threading.Event(), 2: threading.Event()}
    gate[2].set()
    m = _manager(
        tmp_path,
        CheckpointSettings(async_save=True),
        hooks=CheckpointHooks(before_commit=lambda step: gate[step].wait(60)),
    )
    original_wait = m.wait
    seen_when_second_started: list[list[int]] = []

    def spy_wait(raise_errors: bool = True) -> Any:
        result = original_wait(raise_errors)
        seen_when_second_started.append([s for s, _ in committed_steps(tmp_path)])
        return result

    m.save(1, a.shared, a.per_rank)
    m.wait = spy_wait  # type: ignore[method-assign]
    second = threading.Thread(target=m.save, args=(2, a.shared, a.per_rank))
    second.start()
    assert not (tmp_path / ".tmp-step-2").exists()
    gate[1].set()
    second.join(60)
    assert seen_when_second_started[0] == [1], "second save began only after the first committed"
    m.wait = original_wait  # type: ignore[method-assign]
    m.wait()
    assert [s for s, _ in committed_steps(tmp_path)] == [1, 2]


def test_two_ranks_commit_only_when_both_parts_are_written(tmp_path: Path) -> None:
    a = Parts()
    r0 = _manager(tmp_path, CheckpointSettings(async_save=True), place=RankPlace(0, 2))
    r1 = CheckpointManager(tmp_path, place=RankPlace(1, 2))
    r0.save(1, a.shared, a.per_rank)
    poll_until(lambda: (tmp_path / ".tmp-step-1" / "part-0.json").exists(), 30, "rank 0 part")
    assert r0.in_flight and not (tmp_path / "step-1").exists(), "rank 0 waits for rank 1"
    r1.save(1, a.shared, a.per_rank)
    info = r0.wait()
    assert info is not None
    assert verify(tmp_path / "step-1", 1) is None
    assert {"rank-0.pt", "rank-1.pt", "shared.pt"} <= {p.name for p in info.path.iterdir()}

    # Loading with another world size: rank 2 has no RNG file, the shared state still loads.
    class FromRank0:  # rank 0 picked step 1 and broadcast it
        def barrier(self) -> None:
            return None

        def broadcast_object(self, obj: Any) -> Any:
            return 1

    b = Parts(seed=1)
    m2 = CheckpointManager(tmp_path, place=RankPlace(2, 3, FromRank0()))
    loaded = m2.load(b.shared, b.per_rank)
    assert loaded is not None
    assert_bitwise_equal(a.state()["model"], b.state()["model"])


def test_a_failed_rank_aborts_the_commit_at_once(tmp_path: Path) -> None:
    a = Parts()
    r0 = _manager(
        tmp_path, CheckpointSettings(async_save=True, commit_timeout=120), place=RankPlace(0, 2)
    )
    r0.save(1, a.shared, a.per_rank)

    class Broken:
        def state_dict(self) -> dict[str, Any]:
            return {"x": lambda: None}  # torch.save cannot pickle a lambda

        def load_state_dict(self, state: dict[str, Any], /) -> None:
            raise AssertionError

    r1 = CheckpointManager(tmp_path, place=RankPlace(1, 2))
    r1.save(1, {}, {"broken": Broken()})
    with pytest.raises(CheckpointError, match="pickle"):
        r1.wait()
    with pytest.raises(CheckpointError, match="save abandoned: rank 1"):
        r0.wait()
    assert not (tmp_path / "step-1").exists()
