"""A paced checkpoint writer hurries when the node is going: a write asleep in its pace
wakes and finishes unpaced once the stop guard's ``Hurry`` is raised, in the trainer
process (thread mode) and in another process that got the writer pickled, as DCP's
checkpoint process does; and a save started after a notice is never paced (the built-in
trainer's side: tests/unit/spotrun_lm/test_lm_pacing.py). No test here measures time: a
pace of one byte per second would hold a write for hours, so a test that finishes shows
the pace was dropped."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import threading
import warnings
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spotrun_trainer import pacing, shard_writer
from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings, verify
from spotrun_trainer.pacing import Hurry, Pacer
from spotrun_trainer.preemption import StopGuard
from spotrun_trainer.shard_writer import HashingFileSystemWriter, WriterOptions
from spotrun_trainer.sharded import ShardedState

CRAWL = WriterOptions(max_write_mb_per_s=1e-6)  # one byte a second: hours per buffer
SMALL_BUFFER = 4 * shard_writer.BLOCK  # 16 KiB, so a few KiB of data fill several buffers
DATA = bytes(range(256)) * 400  # 102,400 bytes: 6 full buffers
LIVENESS = 120.0  # seconds: a hang guard for a write that should finish, not a timing


def _need_direct(tmp_path: Path) -> None:
    fd = shard_writer._open_direct(tmp_path / "probe")
    if fd is None:  # a missing capability fails, never skips (CI must not pass blind)
        pytest.fail(
            f"{tmp_path} refuses O_DIRECT, and only O_DIRECT shards are paced: run pytest "
            "with --basetemp on a file system that takes it (ext4, xfs)",
            pytrace=False,
        )
    os.close(fd)


class SleepSpy:
    """Wraps ``Hurry.sleep``: counts the pace's sleeps and says when the first began."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.asleep = threading.Event()
        real = Hurry.sleep

        def sleep(hurry: Hurry, seconds: float) -> None:
            self.calls += 1
            self.asleep.set()
            real(hurry, seconds)

        monkeypatch.setattr(Hurry, "sleep", sleep)


def _write(fs: Any, path: Path, out: dict[str, Any]) -> None:
    with fs.create_stream(path, "wb") as stream:
        stream.write(memoryview(DATA))
        stream.close()
        out["pacer"] = stream.pacer


def test_a_paced_write_in_flight_stops_sleeping_once_hurried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread mode: the writer shares the guard's Hurry; raising it wakes the pace."""
    _need_direct(tmp_path)
    monkeypatch.setattr(shard_writer, "DIRECT_BUFFER", SMALL_BUFFER)
    spy = SleepSpy(monkeypatch)
    hurry = Hurry(tmp_path)
    fs = HashingFileSystemWriter("unused", background="thread", options=CRAWL, hurry=hurry).fs
    out: dict[str, Any] = {}
    writer = threading.Thread(target=_write, args=(fs, tmp_path / "__0_0.distcp", out))
    writer.start()
    assert spy.asleep.wait(LIVENESS), "the paced writer never slept"
    hurry.set()
    writer.join(LIVENESS)
    assert not writer.is_alive(), "the write kept its pace after the hurry"
    pacer = out["pacer"]
    assert isinstance(pacer, Pacer) and pacer.hurried and not pacer.paced
    assert spy.calls == 1, "a hurried writer slept again"
    assert (tmp_path / "__0_0.distcp").read_bytes() == DATA
    hurry.close()


def _child_write(conn: Connection, path: str) -> None:
    """In a spawned process, like DCP's checkpoint process: the writer arrives pickled
    through a pipe, after the process started."""
    shard_writer.DIRECT_BUFFER = SMALL_BUFFER
    real = Hurry.sleep

    def sleep(self: Hurry, seconds: float) -> None:
        conn.send("asleep")
        real(self, seconds)

    Hurry.sleep = sleep  # type: ignore[method-assign]  # no pytest monkeypatch in a child
    writer = pickle.loads(conn.recv())
    out: dict[str, Any] = {}
    _write(writer.fs, Path(path), out)
    conn.send(("done", out["pacer"].hurried))


def test_a_paced_write_in_another_process_stops_sleeping_once_hurried(tmp_path: Path) -> None:
    """Process mode: the Hurry travels pickled with the writer; its flag file reaches a
    write that is already asleep in its pace."""
    _need_direct(tmp_path)
    hurry = Hurry(tmp_path)
    ctx = multiprocessing.get_context("spawn")  # as DCP starts its checkpoint process
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_write, args=(child, str(tmp_path / "__0_0.distcp")))
    proc.start()
    try:
        writer = HashingFileSystemWriter("unused", background="process", options=CRAWL,
                                         hurry=hurry)  # fmt: skip
        parent.send(pickle.dumps(writer))
        assert parent.poll(LIVENESS) and parent.recv() == "asleep"
        hurry.set()
        assert parent.poll(LIVENESS), "the write kept its pace after the hurry"
        assert parent.recv() == ("done", True)
        proc.join(LIVENESS)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
        hurry.close()
    assert (tmp_path / "__0_0.distcp").read_bytes() == DATA
    assert not hurry.path.exists()


def test_hurry_copies_read_the_flag_file_and_only_the_owner_removes_it(tmp_path: Path) -> None:
    hurry = Hurry(tmp_path)
    copy = pickle.loads(pickle.dumps(hurry))
    assert not copy.is_set() and not hurry.path.exists()
    hurry.set()
    assert hurry.path.exists() and copy.is_set()
    copy.close()
    assert hurry.path.exists()
    assert pickle.loads(pickle.dumps(hurry)).is_set()  # raised before pickling
    hurry.close()
    assert not hurry.path.exists() and hurry.is_set()


def test_a_hurry_left_unclosed_removes_its_flag_file_when_it_goes(tmp_path: Path) -> None:
    hurry = Hurry(tmp_path)
    hurry.set()
    path = hurry.path
    assert path.exists()
    del hurry
    gc.collect()
    assert not path.exists()


@pytest.mark.parametrize("request_", ["stop", "notice"])
def test_the_guard_raises_the_hurry_on_a_stop_or_a_notice(request_: str) -> None:
    guard = StopGuard()
    assert not guard.hurry.is_set()
    if request_ == "stop":
        guard.request_stop("SIGTERM")
    else:
        guard.request_save("spot notice")
    assert guard.hurry.is_set() and guard.hurry.path.exists()
    guard.uninstall()
    assert not guard.hurry.path.exists()


def test_a_save_started_after_a_notice_is_not_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the manager and DCP (thread mode): the hurry is up before the save, so
    the writer is created unpaced and never sleeps."""
    monkeypatch.setattr(shard_writer, "DIRECT_BUFFER", SMALL_BUFFER)
    spy = SleepSpy(monkeypatch)
    m = CheckpointManager(
        tmp_path, CheckpointSettings(keep_best=False, async_save=True, writer=CRAWL)
    )
    m.prepare()
    m.hurry.set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: no process group, single process
        m.save(1, {}, {}, sharded=_trained_linear())
    done = threading.Thread(target=m.wait)
    done.start()
    done.join(LIVENESS)
    assert not done.is_alive(), "the notice's save was paced"
    assert verify(tmp_path / "step-1", 1) is None
    assert spy.calls == 0
    fs = HashingFileSystemWriter("x", background="process", options=CRAWL, hurry=m.hurry).fs
    assert isinstance(fs, shard_writer.HashingFileSystem) and fs.max_write_mb_per_s == 0
    m.hurry.close()


def _trained_linear() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Linear(64, 64)  # 16 KiB of weights, 33 KiB with both AdamW moments
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    return {"train": ShardedState(model, opt)}


def _in_thread(fn: Any) -> threading.Thread:
    t = threading.Thread(target=fn)
    t.start()
    return t


def test_a_save_that_must_wait_for_a_paced_write_hurries_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop blocks on the write in flight (a save due before the previous one is
    written, the run's end): pacing it then only adds to the stall, so the wait drops its
    pace; the node-wide hurry stays down and the next write is paced again."""
    monkeypatch.setattr(shard_writer, "DIRECT_BUFFER", SMALL_BUFFER)
    spy = SleepSpy(monkeypatch)
    parts = _trained_linear()
    m = CheckpointManager(
        tmp_path, CheckpointSettings(keep_best=False, async_save=True, writer=CRAWL)
    )
    m.prepare()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: no process group, single process
        m.save(1, {}, {}, sharded=parts)
        assert spy.asleep.wait(LIVENESS), "the paced writer never slept"
        spy.asleep.clear()
        second = _in_thread(lambda: m.save(2, {}, {}, sharded=parts))
        second.join(LIVENESS)
    assert not second.is_alive(), "the save waited for a write that kept its pace"
    assert verify(tmp_path / "step-1", 1) is None
    assert not m.hurry.is_set()
    assert spy.asleep.wait(LIVENESS), "the next write was not paced"
    done = _in_thread(m.wait)
    done.join(LIVENESS)
    assert not done.is_alive() and verify(tmp_path / "step-2", 2) is None
    m.close()


def test_an_unpaced_writer_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SleepSpy(monkeypatch)
    pacer = Pacer(0.0, Hurry())
    pacer.pace(10**12)
    assert spy.calls == 0 and not pacer.paced and pacing.POLL_SECONDS > 0
