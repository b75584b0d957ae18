"""Overlapped staging of async sharded saves: the CPU copy of the state runs beside the
next step's forward and backward, and the optimizer step waits for it. The checkpoint
must equal the state at the save step bitwise (here in process, with the copy held back
while the step tries to run; tests/integration/spotrun_trainer/test_trainer_overlap_staging.py
compares real FSDP trainer processes)."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed._state_dict_utils import _copy_state_dict as real_copy
from trainer_helpers import assert_bitwise_equal

from spotrun_trainer import staging
from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings, verify
from spotrun_trainer.sharded import ShardedState, read_full

OVERLAP = CheckpointSettings(keep_best=False, async_save=True, overlap_staging=True)


class Tiny:
    """A model, its AdamW and one fixed batch: a training step in a few lines."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        self.x = torch.randn(8, 16)

    def forward_backward(self) -> None:
        self.model(self.x).pow(2).mean().backward()

    def step(self) -> None:
        self.forward_backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def parts(self) -> dict[str, Any]:
        return {"train": ShardedState(self.model, self.opt)}


def _save(m: CheckpointManager, step: int, tiny: Tiny) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: no process group, single process
        return m.save(step, {}, {}, sharded=tiny.parts())


def test_optimizer_step_waits_for_the_staging_copy(tmp_path: Path, monkeypatch: Any) -> None:
    tiny = Tiny()
    tiny.step()  # AdamW state exists
    sync = CheckpointManager(tmp_path / "sync", CheckpointSettings(keep_best=False))
    sync.prepare()
    _save(sync, 1, tiny)  # the yardstick: the state at step 1, written synchronously

    gate = threading.Event()

    def held_copy(*args: Any, **kwargs: Any) -> Any:
        gate.wait(60)  # the staging copy cannot start before the test lets it
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(staging, "_copy_state_dict", held_copy)
    m = CheckpointManager(tmp_path / "overlap", OVERLAP)
    m.prepare()
    stall = _save(m, 1, tiny)
    assert m.staging_in_flight
    tiny.forward_backward()  # runs while the copy is held: it only reads the state
    threading.Timer(0.5, gate.set).start()
    t0 = time.monotonic()
    tiny.opt.step()  # the step pre-hook holds the update until the copy is done
    waited = time.monotonic() - t0
    tiny.opt.zero_grad(set_to_none=True)
    assert waited >= 0.4
    assert not m.staging_in_flight
    assert m.last_stall_seconds >= stall + 0.4  # the wait counts as stall
    info = m.wait()
    assert info is not None and verify(info.path, 1) is None
    tiny.step()  # no fence left: steps run freely again
    assert_bitwise_equal(read_full(tmp_path / "sync" / "step-1" / "dcp"),
                         read_full(tmp_path / "overlap" / "step-1" / "dcp"))  # fmt: skip


def test_staging_buffers_are_reused_and_each_save_is_its_own_step(tmp_path: Path) -> None:
    tiny = Tiny()
    tiny.step()
    m = CheckpointManager(tmp_path / "overlap", OVERLAP)
    sync = CheckpointManager(tmp_path / "sync", CheckpointSettings(keep_best=False))
    m.prepare()
    sync.prepare()
    for step in (1, 2, 3):
        _save(sync, step, tiny)
        _save(m, step, tiny)
        tiny.step()  # overwrites the state the staged copy came from
        buffers = m._dcp._stager._buffers if m._dcp._stager is not None else None
        assert buffers is not None
        if step == 1:
            first = buffers
        assert buffers is first  # allocated once
    m.wait()
    for step in (1, 2, 3):
        assert_bitwise_equal(read_full(tmp_path / "sync" / f"step-{step}" / "dcp"),
                             read_full(tmp_path / "overlap" / f"step-{step}" / "dcp"))  # fmt: skip
