"""The DCP shard writer: its niceness in a background thread, no CRC32 needed for a
round trip, and the sha256 sidecars it leaves match the bytes on disk."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from spotrun_trainer import sharded
from spotrun_trainer.sharded import DcpSaver, HashingFileSystemWriter, WriterOptions


class Holder:
    """A DCP Stateful over plain tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict[str, Any]:
        return dict(self.tensors)

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        self.tensors = dict(state_dict)


def test_background_writer_lowers_only_its_own_thread() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    def writer_thread() -> None:
        w = HashingFileSystemWriter("unused", background="thread", options=WriterOptions(nice=7))
        w.set_up_storage_writer(True, rank=0)
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))

    t = threading.Thread(target=writer_thread)
    t.start()
    t.join()
    assert seen == [max(7, before)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the training thread is untouched


def test_sync_writer_keeps_the_callers_priority() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    HashingFileSystemWriter("unused", options=WriterOptions(nice=19)).set_up_storage_writer(True)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_async_save_without_crc32_round_trips_with_writer_checksums(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tensors = {"w": torch.randn(64, 32), "b": torch.randn(32), "step": torch.tensor(3)}
    sharded.set_zip_crc32(False)
    saver = DcpSaver("thread", WriterOptions(nice=5, crc32=False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP: no process group, single process
            future = saver.start({"train": Holder(tensors)}, tmp_path / "dcp", None, True)
            assert future is not None
            future.result()
    finally:
        saver.close()
        sharded.set_zip_crc32(True)
    full = sharded.read_full(tmp_path / "dcp")["train"]
    assert set(full) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(full[k], v), k
    shards = sorted((tmp_path / "dcp").glob("*.distcp"))
    assert shards
    for shard in shards:
        digest = json.loads(shard.with_name(shard.name + sharded.SIDECAR).read_text())
        assert digest == {
            "sha256": hashlib.sha256(shard.read_bytes()).hexdigest(),
            "bytes": shard.stat().st_size,
        }
