"""The staging copy of an async sharded save: one CPU buffer per storage, reused by every
save; keys that name one tensor (tied embeddings) share it, and the checkpoint written
from it loads back bitwise."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainer_helpers import assert_bitwise_equal

from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings
from spotrun_trainer.sharded import ShardedState
from spotrun_trainer.staging import ReusedStager, canonical_keys


class TiedLM(nn.Module):
    """An embedding whose output projection is the same Parameter (GPT-2's tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(64, 8)
        self.head = nn.Linear(8, 64, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.head(self.wte(idx)))


def _trained() -> tuple[TiedLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randint(0, 64, (4, 5))).pow(2).mean().backward()
    opt.step()
    return model, opt


def test_keys_naming_one_tensor_map_to_the_first() -> None:
    base = torch.arange(12.0)
    flat = {"a": base, "b": base.view(12), "c": base[2:5], "d": base.clone(), "e": 3}
    assert canonical_keys(flat) == {"a": "a", "b": "a", "c": "c", "d": "d", "e": "e"}


def test_a_tied_embedding_is_staged_once_and_copied_faithfully() -> None:
    model, opt = _trained()
    state = {"train": ShardedState(model, opt).state_dict()}
    stager = ReusedStager(share_memory=False, pin_memory=False, overlap=False)
    staged = stager.stage(state)
    assert isinstance(staged, dict)
    tied = staged["train"]["model"]
    assert tied["head.weight"] is tied["wte.weight"]  # one buffer for both keys
    assert tied["wte.weight"].data_ptr() != model.wte.weight.data_ptr()  # a copy
    assert_bitwise_equal(staged, state)
    with torch.no_grad():
        model.wte.weight.add_(1.0)  # the next save reuses the buffers
    again = stager.stage({"train": ShardedState(model, opt).state_dict()})
    assert isinstance(again, dict)
    assert again["train"]["model"]["wte.weight"] is tied["wte.weight"]
    assert torch.equal(again["train"]["model"]["head.weight"], model.wte.weight.detach())
    stager.close()


def test_a_tied_model_resumes_bitwise_from_an_async_save(tmp_path: Path) -> None:
    model, opt = _trained()
    manager = CheckpointManager(tmp_path, CheckpointSettings(keep_best=False, async_save=True))
    manager.prepare()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: no process group, single process
        manager.save(1, {}, {}, sharded={"train": ShardedState(model, opt)})
        manager.wait()
        fresh = TiedLM()
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
        loaded = manager.load({}, {}, sharded={"train": ShardedState(fresh, fresh_opt)})
    assert loaded is not None and loaded.step == 1
    assert fresh.head.weight is fresh.wte.weight  # still tied after the load
    want: dict[str, Any] = ShardedState(model, opt).state_dict()
    assert_bitwise_equal(ShardedState(fresh, fresh_opt).state_dict(), want)
