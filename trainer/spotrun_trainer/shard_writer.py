"""The writer of a sharded checkpoint's shards: DCP's file system writer, hashing every
shard as it is written (a ``.sha256`` sidecar beside it), with ``O_DIRECT`` where the file
system takes it, paced in the background, at a low CPU priority (sharded.py starts it)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemWriter

from spotrun_trainer.checkpoint_io import write_json
from spotrun_trainer.config import DEFAULT_WRITER_MB_PER_S
from spotrun_trainer.pacing import Hurry, Pacer, leave_process_group

log = logging.getLogger(__name__)

SIDECAR = ".sha256"  # beside each shard: its sha256 and size, from the writer


@dataclass(frozen=True)
class WriterOptions:
    """How a background DCP writer shares the CPU with the training step.

    ``nice``: the niceness the writer runs at (its thread in thread mode, DCP's
    checkpoint process in process mode; raised, never lowered): it takes the CPU the
    step leaves idle first, so the step keeps its share of a busy node. Synchronous saves
    (a stop's) run in the training thread at its own priority. ``crc32``: whether
    ``torch.save`` computes a CRC32 of every record of a shard; the manifest's sha256
    (computed as the bytes are written) already covers every byte, so by default it does
    not (``torch.serialization.set_crc32_options``: process-wide, see ``set_zip_crc32``).
    The checkpoint process also runs torch with one intra-op thread: it only moves bytes."""

    nice: int = 19
    crc32: bool = False
    direct_io: bool = True  # shards written with O_DIRECT where the file system takes it
    # A background writer's pace, MB/s per shard (0: as fast as it goes). Paced, the writer
    # is busy a fraction of the time, so it competes less with the step on a small node;
    # the save takes longer; never a synchronous save, nor once hurried (pacing.py).
    max_write_mb_per_s: float = DEFAULT_WRITER_MB_PER_S


def set_zip_crc32(enabled: bool) -> None:
    """Whether ``torch.save`` writes CRC32s in this process (a process-wide torch setting;
    every file of a checkpoint is covered by a sha256 in its manifest either way, and
    ``torch.load`` does not check them)."""
    torch.serialization.set_crc32_options(enabled)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness to ``nice`` (on Linux a per-thread setting;
    threads it starts inherit it). Never lowers it: that needs privileges."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:  # pragma: no cover - seccomp or an odd platform: keep going
        log.debug("could not renice the checkpoint writer: %s", e)


class _HashingStream:
    """A file written front to back, hashed on the way (no second read of the shard)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.sequential = True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if self._f.tell() != self.size:
            self.sequential = False
        self.sha.update(view)
        self.size += view.nbytes
        written: int = self._f.write(view)
        return written

    def seek(self, offset: int, whence: int = 0) -> int:
        pos: int = self._f.seek(offset, whence)
        if pos != self.size:
            self.sequential = False
        return pos

    def __getattr__(self, name: str) -> Any:  # tell, flush, fileno, close, ...
        return getattr(self._f, name)


BLOCK = 4096  # O_DIRECT alignment of buffers, offsets and sizes (a page: every block divides it)
DIRECT_BUFFER = 8 << 20  # bytes gathered before each O_DIRECT write


class _DirectHashingStream:
    """A shard written front to back with ``O_DIRECT`` and hashed on the way.

    Buffered writes make the kernel copy every byte into the page cache, in the writer's
    own CPU time: ~3 of the ~5 CPU seconds a 1.3 GB shard cost on the 2-core test box
    (the sha256 ~1). Here the bytes are copied (numpy, without the GIL) into one
    page-aligned buffer, hashed there while still in cache, and each full buffer goes to
    the disk by DMA. ``flush()`` keeps what has not filled the buffer (DCP calls it after
    every item); ``close()`` writes the rest (the tail under a block without ``O_DIRECT``)
    and fsyncs, so the commit protocol sees a durable file exactly as before. A file
    system that refuses ``O_DIRECT`` writes gets buffered ones. ``pacer`` (none: unpaced)
    may hold it after each full buffer."""

    def __init__(self, fd: int, pacer: Pacer | None = None) -> None:
        self.fd = fd
        self.pacer = pacer or Pacer(0.0)
        self.sha = hashlib.sha256()
        self.size = 0  # bytes taken: the stream's position
        self.sequential = True
        raw = np.empty(DIRECT_BUFFER + BLOCK, dtype=np.uint8)
        start = -raw.ctypes.data % BLOCK
        self._buf = raw[start : start + DIRECT_BUFFER]
        self._view = memoryview(self._buf)  # type: ignore[arg-type]
        self._fill = 0
        self._direct = True
        self.closed = False

    def write(self, data: Any) -> int:
        if memoryview(data).nbytes == 0:
            return 0
        src = np.frombuffer(data, dtype=np.uint8)
        n, pos = src.size, 0
        while pos < n:
            take = min(n - pos, DIRECT_BUFFER - self._fill)
            end = self._fill + take
            np.copyto(self._buf[self._fill : end], src[pos : pos + take])
            self.sha.update(self._view[self._fill : end])
            self._fill, pos = end, pos + take
            if self._fill == DIRECT_BUFFER:
                self._write_out(self._view[:DIRECT_BUFFER])
                self._fill = 0
                self.pacer.pace(self.size + pos)
        self.size += n
        return n

    def _buffered(self) -> None:
        if self._direct:
            self._direct = False
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)

    def _write_out(self, chunk: memoryview) -> None:
        done = 0
        while done < len(chunk):
            try:
                n = os.write(self.fd, chunk[done:])
            except OSError as e:
                if e.errno != errno.EINVAL or not self._direct:
                    raise
                log.info("O_DIRECT write refused (%s): writing buffered", e)
                self._buffered()
                continue
            done += n
            if n % BLOCK:  # a short write left the offset unaligned
                self._buffered()

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("a shard is written front to back")

    def flush(self) -> None:
        """Nothing: a partial block stays in the buffer until close()."""

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Write what is left, fsync, close the file."""
        if self.closed:
            return
        try:
            whole = self._fill - self._fill % BLOCK
            if whole:
                self._write_out(self._view[:whole])
            if whole < self._fill:
                self._buffered()
                self._write_out(self._view[whole : self._fill])
            self._fill = 0
            os.fsync(self.fd)
        finally:
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._view.release()
            os.close(self.fd)


def _open_direct(path: Path) -> int | None:
    """A new file opened for O_DIRECT writes; None where that is not on offer (tmpfs)."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | direct, 0o666)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return None


class HashingFileSystem(FileSystem):
    """DCP's local file system, writing ``<shard>.sha256`` (sha256 and size) beside each
    shard it writes, from the bytes as they were written: the manifest then needs no
    second read of the shards in the training process. Shards are written with
    ``O_DIRECT`` where the file system takes it (``_DirectHashingStream``), paced to
    ``max_write_mb_per_s`` until ``hurry`` is raised."""

    def __init__(
        self, direct_io: bool = True, max_write_mb_per_s: float = 0.0, hurry: Hurry | None = None
    ) -> None:
        super().__init__()
        self.direct_io = direct_io
        self.max_write_mb_per_s = max_write_mb_per_s
        self.hurry = hurry

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        p = Path(path)
        if "w" not in mode or not p.name.endswith(".distcp"):
            with super().create_stream(p, mode) as plain:
                yield plain
            return
        fd = _open_direct(p) if mode == "wb" and self.direct_io else None
        if fd is None:
            with p.open(mode) as f:
                hashing: _HashingStream | _DirectHashingStream = _HashingStream(f)
                yield hashing
        else:
            hashing = _DirectHashingStream(fd, Pacer(self.max_write_mb_per_s, self.hurry))
            try:
                yield hashing
                hashing.close()
            finally:
                hashing.abort()
        if hashing.sequential and p.stat().st_size == hashing.size:
            digest = {"sha256": hashing.sha.hexdigest(), "bytes": hashing.size}
            write_json(p.with_name(p.name + SIDECAR), digest)


class HashingFileSystemWriter(FileSystemWriter):
    """DCP's file system writer over ``HashingFileSystem``. ``background`` says where it
    writes (``thread``, ``process`` or None: the caller's thread, a synchronous save);
    there it first applies ``options`` to the thread or process it runs in (it is pickled
    to DCP's checkpoint process, so it configures that process from inside). Only a
    background write is paced, and not once ``hurry`` is raised (a notice's save)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        background: str | None = None,
        options: WriterOptions | None = None,
        hurry: Hurry | None = None,
    ) -> None:
        super().__init__(path)
        self.background = background
        self.options = options or WriterOptions()
        paced = background is not None and not (hurry is not None and hurry.is_set())
        rate = self.options.max_write_mb_per_s if paced else 0.0
        self.fs = HashingFileSystem(self.options.direct_io, rate, hurry)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        # Runs where the write runs: DCP's writer thread, or its checkpoint process.
        if self.background == "process":
            leave_process_group()  # a stop's killpg must not kill the write in flight
            set_zip_crc32(self.options.crc32)  # the checkpoint process only writes shards
            torch.set_num_threads(1)  # it moves bytes; no intra-op pool to spin
        if self.background is not None:
            _lower_priority(self.options.nice)
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
