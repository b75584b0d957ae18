"""Checkpoint manager: one manager over dicts of Stateful parts, ``step-N`` folders.

Layout of a committed checkpoint (all ranks share the folder)::

    step-<N>/shared.pt      state replicated across DDP ranks, written once by rank 0
    step-<N>/rank-<r>.pt    per-rank state (RNG), written by rank r
    step-<N>/dcp/           FSDP only: model and optimizer shards written by every rank
                            through torch.distributed.checkpoint (DCP), see sharded.py
    step-<N>/part-<r>.json  what rank r wrote, with sha256 and size
    step-<N>/COMMITTED      manifest of every file with checksums, written and fsync'd last

Replicated state (DDP model and optimizer, scheduler, sampler, counters) stays plain
``torch.save``: every rank holds the same copy, so DCP would buy nothing but its
planner, and one file per role loads without a process group. Sharded state (FSDP)
goes through DCP, which also reshards it on load to another world size.

Commit protocol: every rank writes into ``.tmp-step-N/``, fsyncs its files and then a
part file; rank 0 waits for all parts (files on the shared volume, never a collective, so
it can run in a background thread beside training collectives), writes the manifest,
fsyncs the folder, renames it to ``step-N`` and fsyncs the parent. A folder named
``step-N`` therefore always holds complete files, and one without a valid manifest is
never loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from spotrun_api import contract
from spotrun_trainer import sharded as sharded_io
from spotrun_trainer.checkpoint_io import (
    DELETING_PREFIX,
    FORMAT_VERSION,
    SHARED_FILE,
    TMP_PREFIX,
    CheckpointError,
    committed_steps,
    fsync_dir,
    gather_parts,
    now_rfc3339,
    pick_intact,
    read_marker,
    remove_dir,
    snapshot,
    verify,
    write_json,
    write_torch,
)
from spotrun_trainer.pacing import Hurry
from spotrun_trainer.state import Stateful

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "Collectives",
    "LocalCollectives",
    "committed_steps",
    "verify",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Collectives(Protocol):
    """The two collectives the manager needs, run on the main thread only."""

    def barrier(self) -> None: ...

    def broadcast_object(self, obj: T) -> T: ...


class LocalCollectives:
    """Single process: nothing to agree with."""

    def barrier(self) -> None:
        return None

    def broadcast_object(self, obj: T) -> T:
        return obj


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    committed_at: str
    bytes: int
    seconds: float
    metric: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class CheckpointManager:
    """Saves and loads ``{name: Stateful}`` dicts as ``step-N`` folders under ``directory``.

    ``shared`` parts are identical on every rank and written by rank 0; ``per_rank``
    parts (RNG) are written by every rank; ``sharded`` parts (FSDP) by every rank through
    DCP. With ``async_save`` the state is copied to CPU memory on the caller's thread and
    written in the background (DCP's thread or process per ``async_mode``; the commit by a
    thread of the manager); a new save first waits for the one in flight.
    ``overlap_staging`` (async, sharded parts): the CPU copy of the sharded state runs in
    a staging thread while training goes on, and the manager blocks the next
    ``optimizer.step`` of each sharded part's ``optimizer`` (a step pre-hook) until that
    copy is done — the first point where the state changes; see ``wait_staged``.
    ``writer_options`` (``sharded.WriterOptions``): the background writer's niceness, pace
    and whether ``torch.save`` writes CRC32s; ``hurry`` (``pacing.Hurry``, the stop guard's):
    once raised, paced writes go as fast as they can (``self.hurry``).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        rank: int = 0,
        world_size: int = 1,
        keep: int = 3,
        keep_best: bool = True,
        async_save: bool = False,
        async_mode: str = "thread",
        overlap_staging: bool = False,
        writer_options: sharded_io.WriterOptions | None = None,
        hurry: Hurry | None = None,
        process_group: Any = None,
        commit_timeout: float = 600.0,
        collectives: Collectives | None = None,
        restore_missing: Callable[[Path], object] | None = None,
        on_commit: Callable[[CheckpointInfo], None] | None = None,
        before_commit: Callable[[int], None] | None = None,
        after_write: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.rank, self.world_size = rank, world_size
        self.keep, self.keep_best = keep, keep_best
        self.async_save = async_save
        self.async_mode = async_mode  # thread or process: how DCP writes sharded parts
        self.process_group = process_group  # DCP's group (gloo); None: the default group
        self.overlap_staging = overlap_staging
        self._dcp = sharded_io.DcpSaver(async_mode, writer_options, overlap_staging, hurry)
        self.hurry = self._dcp.hurry  # raise it when the node is going or the run ends
        self._staging: Future[Any] | None = None  # overlapped staging copy in flight
        self._fences: list[Any] = []  # optimizer step pre-hooks waiting for it
        # Every file of a checkpoint gets a sha256 in the manifest as it is written, so
        # torch.save's per-record CRC32 is a second checksum of the same bytes: off by
        # default (process-wide; a torch.load does not check it).
        sharded_io.set_zip_crc32(self._dcp.options.crc32)
        self.commit_timeout = commit_timeout
        self.collectives: Collectives = collectives or LocalCollectives()
        self.restore_missing = restore_missing
        self.on_commit = on_commit
        self.before_commit = before_commit
        self.after_write = after_write  # every rank, between its files and its part file
        self.last_stall_seconds = 0.0
        self._thread: threading.Thread | None = None
        self._result: CheckpointInfo | None = None
        self._error: BaseException | None = None

    # --- start-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder and drop leftovers of interrupted saves (rank 0), then barrier."""
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            for entry in self.directory.iterdir():
                if entry.name.startswith((TMP_PREFIX, DELETING_PREFIX)):
                    log.info("removing leftover of an interrupted save or prune: %s", entry)
                    shutil.rmtree(entry, ignore_errors=True)
        self.collectives.barrier()

    def load(
        self,
        shared: Mapping[str, Stateful],
        per_rank: Mapping[str, Stateful],
        map_location: str | torch.device = "cpu",
        *,
        sharded: Mapping[str, Stateful] | None = None,
    ) -> CheckpointInfo | None:
        """Load the newest intact checkpoint into the parts; None when there is none.

        ``sharded`` parts (FSDP model and optimizer) load through DCP, resharded to this
        world size; every rank must call this with the same parts."""
        step = pick_intact(self.directory, self.restore_missing) if self.rank == 0 else None
        step = self.collectives.broadcast_object(step)
        if step is None:
            return None
        path = self.directory / contract.step_dir_name(step)
        shared_sd = torch.load(path / SHARED_FILE, map_location=map_location, weights_only=True)
        for name, part in shared.items():
            part.load_state_dict(shared_sd[name])
        rank_file = path / f"rank-{self.rank}.pt"
        if rank_file.exists():
            rank_sd = torch.load(rank_file, map_location="cpu", weights_only=True)
            for name, part in per_rank.items():
                part.load_state_dict(rank_sd[name])
        elif per_rank:
            log.warning(
                "%s has no state for rank %d (world size changed?): its RNG keeps its seed",
                path,
                self.rank,
            )
        if sharded:
            folder = path / sharded_io.DCP_DIR
            if not (folder / sharded_io.DCP_METADATA).is_file():
                raise CheckpointError(f"{path} holds no sharded state (saved without FSDP?)")
            sharded_io.load(dict(sharded), folder, self.process_group)
        marker = read_marker(path) or {}
        return CheckpointInfo(
            step=step,
            path=path,
            committed_at=str(marker.get("committed_at", "")),
            bytes=sum(int(e["bytes"]) for e in marker.get("files", {}).values()),
            seconds=0.0,
            metric=marker.get("metric"),
            meta=dict(marker.get("meta", {})),
        )

    # --- saving --------------------------------------------------------------------------

    def save(
        self,
        step: int,
        shared: Mapping[str, Stateful],
        per_rank: Mapping[str, Stateful],
        *,
        metric: float | None = None,
        meta: Mapping[str, Any] | None = None,
        sharded: Mapping[str, Stateful] | None = None,
        blocking: bool = False,
    ) -> float:
        """Start (async) or do (sync) a save; returns the seconds the caller was blocked.

        ``sharded`` parts are written by every rank through DCP (async: staged to CPU
        memory here, written by DCP's thread or process). ``blocking`` makes this save
        synchronous whatever ``async_save`` says (the save of a stop: nothing is left
        running when the process exits)."""
        t0 = time.monotonic()
        self.wait(raise_errors=False)
        background = self.async_save and not blocking
        shared_sd = {k: v.state_dict() for k, v in shared.items()} if self.rank == 0 else {}
        rank_sd = {k: v.state_dict() for k, v in per_rank.items()}
        self._result, self._error = None, None
        dcp_future = None
        if sharded:
            tmp = self.directory / f"{TMP_PREFIX}{contract.step_dir_name(step)}"
            folder = tmp / sharded_io.DCP_DIR
            dcp_future = self._dcp.start(dict(sharded), folder, self.process_group, background)
        if background:
            memo: dict[tuple[Any, ...], torch.Tensor] = {}
            shared_sd, rank_sd = snapshot(shared_sd, memo), snapshot(rank_sd, memo)
        args = (step, shared_sd, rank_sd, metric, dict(meta or {}), t0, bool(sharded), dcp_future)
        if background:
            self._thread = threading.Thread(
                target=self._run, args=args, name=f"ckpt-save-{step}", daemon=True
            )
            self._thread.start()
        else:
            self._run(*args)
        self.last_stall_seconds = time.monotonic() - t0
        if background and self._dcp.staging is not None:
            self._fence(self._dcp.staging, sharded or {})
        return self.last_stall_seconds

    def _fence(self, staging: Future[Any], sharded: Mapping[str, Stateful]) -> None:
        """Hold every sharded part's next ``optimizer.step`` until ``staging`` is done.

        The staged copy must equal the state at the save step. Forward and backward only
        read parameters and optimizer state (they write activations and gradients, which
        are not saved); the optimizer step is the first thing that writes them, so that
        is where the loop waits. RNG, sampler and the other shared and per-rank parts were
        copied in ``save`` itself."""
        self._staging = staging
        for part in sharded.values():
            optimizer = getattr(part, "optimizer", None)
            if isinstance(optimizer, torch.optim.Optimizer):
                self._fences.append(optimizer.register_step_pre_hook(self._fence_hook))

    def _fence_hook(self, *_: Any) -> None:
        self.wait_staged()  # a step pre-hook must return None

    def wait_staged(self) -> float:
        """Block until an overlapped staging copy is done (nothing when none runs); the
        seconds blocked are added to ``last_stall_seconds``. A failed copy is not raised
        here: the save fails with it, and ``wait`` reports that."""
        staging, self._staging = self._staging, None
        for hook in self._fences:
            hook.remove()
        self._fences.clear()
        if staging is None:
            return 0.0
        t0 = time.monotonic()
        with contextlib.suppress(BaseException):
            staging.result()
        waited = time.monotonic() - t0
        self.last_stall_seconds += waited
        return waited

    @property
    def staging_in_flight(self) -> bool:
        """An overlapped staging copy was started and not yet waited for."""
        return self._staging is not None

    def wait(self, raise_errors: bool = True) -> CheckpointInfo | None:
        """Block until the save in flight is done; its info on rank 0 (None elsewhere). A
        paced write still running then drops its pace: the caller is blocked on it."""
        self.wait_staged()
        if self.in_flight:
            self._dcp.hurries.hurry_write()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            if raise_errors:
                raise CheckpointError(str(err)) from err
        return self._result

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """After the last save: release the staging buffers."""
        self.wait(raise_errors=False)
        self._dcp.close()

    def _run(self, *args: Any) -> None:
        try:
            self._result = self._write(*args)
        except BaseException as e:
            self._error = e
            log.error("checkpoint save of step %s failed: %s", args[0], e)

    def _write(
        self,
        step: int,
        shared_sd: dict[str, Any],
        rank_sd: dict[str, Any],
        metric: float | None,
        meta: dict[str, Any],
        t0: float,
        sharded: bool = False,
        dcp_future: Future[Any] | None = None,
    ) -> CheckpointInfo | None:
        tmp = self.directory / f"{TMP_PREFIX}{contract.step_dir_name(step)}"
        tmp.mkdir(parents=True, exist_ok=True)
        part = tmp / f"part-{self.rank}.json"
        try:
            files: dict[str, Any] = {}
            if self.rank == 0:
                files[SHARED_FILE] = write_torch(tmp / SHARED_FILE, shared_sd)
            files[f"rank-{self.rank}.pt"] = write_torch(tmp / f"rank-{self.rank}.pt", rank_sd)
            if dcp_future is not None:
                dcp_future.result()  # this rank's shards (and on rank 0 the metadata) are written
            if sharded:
                files.update(sharded_io.rank_entries(tmp / sharded_io.DCP_DIR, self.rank))
            if self.after_write is not None:
                self.after_write(step)
        except BaseException as e:
            # Tell rank 0 at once rather than let it wait out commit_timeout.
            with contextlib.suppress(OSError):
                write_json(part, {"error": f"rank {self.rank}: {e}"})
            raise
        write_json(part, {"files": files})
        if self.rank != 0:
            return None
        return self._commit(tmp, step, metric, meta, t0, sharded)

    def _commit(
        self, tmp: Path, step: int, metric: float | None, meta: dict[str, Any], t0: float,
        sharded: bool,
    ) -> CheckpointInfo:  # fmt: skip
        """Rank 0: wait for every part, write the manifest, rename to ``step-N``, prune."""
        all_files = gather_parts(tmp, self.world_size, self.commit_timeout)
        if sharded:
            fsync_dir(tmp / sharded_io.DCP_DIR)
        if self.before_commit is not None:
            self.before_commit(step)
        committed_at = now_rfc3339()
        write_json(
            tmp / contract.COMMIT_MARKER,
            {
                "format": FORMAT_VERSION,
                "step": step,
                "world_size": self.world_size,
                "sharded": sharded,
                "committed_at": committed_at,
                "metric": metric,
                "meta": meta,
                "files": all_files,
            },
        )
        fsync_dir(tmp)
        final = self.directory / contract.step_dir_name(step)
        if final.exists():  # a damaged or superseded copy of the same step
            remove_dir(final)
        os.rename(tmp, final)
        fsync_dir(self.directory)
        info = CheckpointInfo(
            step=step,
            path=final,
            committed_at=committed_at,
            bytes=sum(int(e["bytes"]) for e in all_files.values()),
            seconds=time.monotonic() - t0,
            metric=metric,
            meta=meta,
        )
        log.info("checkpoint step %d committed (%d bytes, %.2fs)", step, info.bytes, info.seconds)
        self.prune()
        if self.on_commit is not None:
            try:
                self.on_commit(info)
            except Exception:
                log.exception("checkpoint commit callback failed")
        return info

    def prune(self) -> list[int]:
        """Delete committed checkpoints beyond the newest ``keep`` (and the best); rank 0."""
        steps = committed_steps(self.directory)
        protected = {s for s, _ in steps[-self.keep :]}
        if self.keep_best:
            scored = [
                (m["metric"], s)
                for s, p in steps
                if (m := read_marker(p)) is not None and m.get("metric") is not None
            ]
            if scored:
                protected.add(min(scored)[1])
        removed = []
        for s, p in steps:
            if s not in protected:
                remove_dir(p)
                removed.append(s)
        if removed:
            fsync_dir(self.directory)
        return removed
