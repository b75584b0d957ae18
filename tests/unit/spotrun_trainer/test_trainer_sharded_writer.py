"""The DCP shard writer: its niceness in a background thread, no CRC32 needed for a
round trip, and the sha256 sidecars it leaves match the bytes on disk."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from spotrun_trainer import shard_writer, sharded
from spotrun_trainer.shard_writer import HashingFileSystemWriter, WriterOptions
from spotrun_trainer.sharded import DcpSaver


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
    shard_writer.set_zip_crc32(False)
    saver = DcpSaver("thread", WriterOptions(nice=5, crc32=False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP: no process group, single process
            future = saver.start({"train": Holder(tensors)}, tmp_path / "dcp", None, True)
            assert future is not None
            future.result()
    finally:
        saver.close()
        shard_writer.set_zip_crc32(True)
    full = sharded.read_full(tmp_path / "dcp")["train"]
    assert set(full) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(full[k], v), k
    shards = sorted((tmp_path / "dcp").glob("*.distcp"))
    assert shards
    for shard in shards:
        digest = json.loads(shard.with_name(shard.name + shard_writer.SIDECAR).read_text())
        assert digest == {
            "sha256": hashlib.sha256(shard.read_bytes()).hexdigest(),
            "bytes": shard.stat().st_size,
        }


def _write_shard(path: Path, pieces: list[bytes]) -> Any:
    with shard_writer.HashingFileSystem().create_stream(path, "wb") as stream:
        for piece in pieces:
            stream.write(memoryview(piece))
            stream.flush()  # DCP flushes after every item: must not break alignment
        stream.close()  # DCP closes inside the with block
    return stream


def _pieces(seed: int) -> list[bytes]:
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 4095, 4097, 3 * shard_writer.BLOCK, 70_001, 0, 12_345, 2 * shard_writer.BLOCK + 5]
    return [torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).numpy().tobytes()
            for n in sizes]  # fmt: skip


def _assert_sidecar_matches(path: Path, expected: bytes) -> None:
    assert path.read_bytes() == expected
    digest = json.loads(path.with_name(path.name + shard_writer.SIDECAR).read_text())
    assert digest == {"sha256": hashlib.sha256(expected).hexdigest(), "bytes": len(expected)}


def test_direct_stream_writes_every_byte_across_buffer_boundaries(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(shard_writer, "DIRECT_BUFFER", 4 * shard_writer.BLOCK)  # many full buffers
    pieces = _pieces(1)
    stream = _write_shard(tmp_path / "__0_0.distcp", pieces)
    if shard_writer._open_direct(tmp_path / "probe") is None:
        return  # this file system takes no O_DIRECT: the buffered stream wrote it
    assert isinstance(stream, shard_writer._DirectHashingStream)
    assert stream._direct is False  # the tail under a block went out buffered
    _assert_sidecar_matches(tmp_path / "__0_0.distcp", b"".join(pieces))


def test_direct_stream_falls_back_to_buffered_writes_when_refused(
    tmp_path: Path, monkeypatch: Any
) -> None:
    if shard_writer._open_direct(tmp_path / "probe") is None:
        return
    real_write = os.write

    def refuse_direct(fd: int, data: Any) -> int:
        if fcntl_flags(fd) & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_direct)
    monkeypatch.setattr(shard_writer, "DIRECT_BUFFER", 2 * shard_writer.BLOCK)
    pieces = _pieces(2)
    _write_shard(tmp_path / "__1_0.distcp", pieces)
    _assert_sidecar_matches(tmp_path / "__1_0.distcp", b"".join(pieces))


def fcntl_flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_file_systems_without_o_direct_get_the_buffered_stream(
    tmp_path: Path, monkeypatch: Any
) -> None:
    real_open = os.open

    def no_direct(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")  # what a file system without it says
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    pieces = _pieces(3)
    stream = _write_shard(tmp_path / "__0_0.distcp", pieces)
    assert isinstance(stream, shard_writer._HashingStream)
    _assert_sidecar_matches(tmp_path / "__0_0.distcp", b"".join(pieces))


def test_paced_writer_keeps_its_rate_and_sync_saves_are_never_paced(
    tmp_path: Path, monkeypatch: Any
) -> None:
    options = WriterOptions(max_write_mb_per_s=0.2)
    unpaced = HashingFileSystemWriter("unused", options=options).fs
    paced = HashingFileSystemWriter("unused", background="thread", options=options).fs
    assert isinstance(unpaced, shard_writer.HashingFileSystem)
    assert isinstance(paced, shard_writer.HashingFileSystem)
    assert unpaced.max_write_mb_per_s == 0.0
    assert paced.max_write_mb_per_s == 0.2
    if shard_writer._open_direct(tmp_path / "probe") is None:
        return  # no O_DIRECT here: the buffered stream is not paced
    monkeypatch.setattr(shard_writer, "DIRECT_BUFFER", 4 * shard_writer.BLOCK)  # 16 KiB buffers
    data = bytes(range(256)) * 400  # 102,400 bytes: 6 full buffers, due at 0.2 MB/s by 0.49 s
    t0 = time.monotonic()
    with paced.create_stream(tmp_path / "__0_0.distcp", "wb") as stream:
        stream.write(memoryview(data))
        stream.close()
    assert time.monotonic() - t0 >= 0.45
    _assert_sidecar_matches(tmp_path / "__0_0.distcp", data)
