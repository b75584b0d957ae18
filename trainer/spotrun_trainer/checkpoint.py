"""Checkpoint manager: one manager over dicts of Stateful parts, ``step-N`` folders.

Layout of a committed checkpoint (all ranks share the folder)::

    step-<N>/shared.pt      state replicated across DDP ranks, written once by rank 0
    step-<N>/rank-<r>.pt    per-rank state (RNG), written by rank r
    step-<N>/dcp/           FSDP only: model and optimizer shards written by every rank
                            through torch.distributed.checkpoint (DCP), see sharded.py
    step-<N>/part-<r>.json  what rank r wrote, with sha256 and size
    step-<N>/COMMITTED      manifest of every file with checksums, written and fsync'd last

Replicated state (DDP model and optimizer, scheduler, sampler, counters) stays plain
``torch.save``: every rank holds the same copy, so DCP would buy nothing but its planner,
and one file per role loads without a process group. Sharded state (FSDP) goes through
DCP, which also reshards it on load to another world size.

Commit protocol: every rank writes into ``.tmp-step-N/``, fsyncs its files, then a part
file; rank 0 waits for all parts (files on the shared volume, never a collective: it runs
in a background thread beside training collectives), commits the folder (commit.py:
manifest, fsync, rename to ``step-N``, parent fsync) and prunes. A ``step-N`` folder
always holds complete files; one without a valid manifest is never loaded.

Fencing (``settings.epoch``, the attempt; fencing.py): ``prepare`` moves the fence on rank 0
before anything is loaded, ``load`` and retention see only what the fence accepts, and a
save of a fenced attempt raises ``CheckpointFenced`` (exit ``EXIT_FENCED``) on every rank,
before it writes or, when the fence moves meanwhile, at the commit on rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from spotrun_api import contract
from spotrun_trainer import commit, fencing, phases
from spotrun_trainer import sharded as sharded_io
from spotrun_trainer.checkpoint_io import (
    SHARED_FILE,
    CheckpointError,
    committed_steps,
    fsync_dir,
    gather_parts,
    pick_intact,
    read_marker,
    snapshot,
    verify,
    write_json,
    write_torch,
)
from spotrun_trainer.checkpoint_settings import (
    CheckpointHooks,
    CheckpointInfo,
    CheckpointSettings,
    Collectives,
    LocalCollectives,
    RankPlace,
)
from spotrun_trainer.fencing import CheckpointFenced
from spotrun_trainer.staging import StagingFence
from spotrun_trainer.state import Stateful

__all__ = [
    "CheckpointError",
    "CheckpointFenced",
    "CheckpointHooks",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointSettings",
    "Collectives",
    "LocalCollectives",
    "RankPlace",
    "committed_steps",
    "verify",
]

log = logging.getLogger(__name__)


class CheckpointManager:
    """Saves and loads ``{name: Stateful}`` dicts as ``step-N`` folders under ``directory``.

    ``shared`` parts are identical on every rank and written by rank 0; ``per_rank``
    parts (RNG) are written by every rank; ``sharded`` parts (FSDP) by every rank through
    DCP. ``settings`` say how (:class:`CheckpointSettings`), ``place`` where this process
    stands (:class:`RankPlace`), ``hooks`` what it is told and tells
    (:class:`CheckpointHooks`).
    """

    def __init__(
        self,
        directory: str | Path,
        settings: CheckpointSettings | None = None,
        *,
        place: RankPlace | None = None,
        hooks: CheckpointHooks | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.settings = settings or CheckpointSettings()
        self.place = place or RankPlace()
        self.hooks = hooks or CheckpointHooks()
        self.rank, self.world_size = self.place.rank, self.place.world_size
        self.epoch = self.settings.epoch  # the attempt; None: not fenced
        self.collectives: Collectives = self.place.collectives
        s = self.settings
        self._dcp = sharded_io.DcpSaver(s.async_mode, s.writer, s.overlap_staging, self.hooks.hurry)
        self.hurry = self._dcp.hurry  # raise it when the node is going or the run ends
        self._fence = StagingFence(self._add_stall)  # overlapped staging copy in flight
        self.last_stall_seconds = 0.0
        self._thread: threading.Thread | None = None
        self._result: CheckpointInfo | None = None
        self._error: BaseException | None = None
        self._found: tuple[int | None] | None = None  # find()'s answer, for the next load

    # --- start-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folder, move the fence (when fenced) and drop leftovers of interrupted
        saves (rank 0), then agree. An attempt that a newer one has fenced already raises
        ``CheckpointFenced`` on every rank."""
        fence = commit.prepare(self.directory, self.epoch) if self.rank == 0 else None
        if self.epoch is None:
            self.collectives.barrier()
            return
        newest = self.collectives.broadcast_object(None if fence is None else fence.epoch)
        if newest is not None and newest > self.epoch:
            what = f"attempt {self.epoch} cannot start"
            raise fencing.fenced(self.directory, None, self.epoch, newest, what)

    def find(self) -> int | None:
        """The step the next ``load`` loads, None when there is none: rank 0 picks the newest
        intact checkpoint and every rank learns it (collective; after ``prepare``). A
        caller may build what it loads into knowing whether it resumes."""
        step = self._pick() if self.rank == 0 else None
        self._found = (self.collectives.broadcast_object(step),)
        return self._found[0]

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
        world size; every rank must call this with the same parts. It loads the step that
        ``find`` found, when that was called since the last load. The first load of the
        process ends its ``load`` restart phase (phases.py)."""
        found, self._found = self._found, None
        step = found[0] if found is not None else self.find()
        self._found = None  # find() keeps its answer for the next load: this one
        if step is None:
            phases.CLOCK.loaded(None)
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
            sharded_io.load(dict(sharded), folder, self.place.process_group)
        marker = read_marker(path) or {}
        phases.CLOCK.loaded(step)
        return CheckpointInfo(
            step=step,
            path=path,
            committed_at=str(marker.get("committed_at", "")),
            bytes=sum(int(e["bytes"]) for e in marker.get("files", {}).values()),
            seconds=0.0,
            metric=marker.get("metric"),
            meta=dict(marker.get("meta", {})),
        )

    def _pick(self) -> int | None:
        """Rank 0: the step to load. Fenced: among what the fence accepts, and a checkpoint
        restored from the mirror into a folder that had none is accepted by this
        attempt's fence (it was not there when the fence moved)."""
        restore = self.hooks.restore_missing
        if self.epoch is None:
            return pick_intact(self.directory, restore)
        return fencing.pick(self.directory, self.epoch, restore)

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
        self.wait(raise_errors=False)  # a refused commit: the fence check below says so
        self._check_fence(step)
        background = self.settings.async_save and not blocking
        shared_sd = {k: v.state_dict() for k, v in shared.items()} if self.rank == 0 else {}
        rank_sd = {k: v.state_dict() for k, v in per_rank.items()}
        self._result, self._error = None, None
        dcp_future = None
        if sharded:
            folder = commit.tmp_dir(self.directory, step, self.epoch) / sharded_io.DCP_DIR
            group = self.place.process_group
            dcp_future = self._dcp.start(dict(sharded), folder, group, background)
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
            if isinstance(self._error, CheckpointFenced):
                fenced, self._error = self._error, None
                raise fenced
        self.last_stall_seconds = time.monotonic() - t0
        if background and self._dcp.staging is not None:
            # RNG, sampler and the other shared and per-rank parts were copied above.
            self._fence.hold(self._dcp.staging, sharded or {})
        return self.last_stall_seconds

    def _check_fence(self, step: int) -> None:
        """Fenced runs, before a save: rank 0 reads the fence and every rank learns it, so
        a fenced gang leaves together, each rank with ``CheckpointFenced``."""
        if self.epoch is None:
            return
        newest = fencing.newest_epoch(self.directory) if self.rank == 0 else None
        newest = self.collectives.broadcast_object(newest)
        if newest is not None and newest > self.epoch:
            raise fencing.fenced(self.directory, step, self.epoch, newest)

    def wait_staged(self) -> float:
        """Block until an overlapped staging copy is done (nothing when none runs); the
        seconds blocked are added to ``last_stall_seconds``. A failed copy is not raised
        here: the save fails with it, and ``wait`` reports that."""
        return self._fence.wait()

    def _add_stall(self, seconds: float) -> None:
        self.last_stall_seconds += seconds

    @property
    def staging_in_flight(self) -> bool:
        """An overlapped staging copy was started and not yet waited for."""
        return self._fence.in_flight

    def wait(self, raise_errors: bool = True) -> CheckpointInfo | None:
        """Block until the save in flight is done; its info on rank 0 (None elsewhere). A
        paced write still running then drops its pace: the caller is blocked on it. A
        refused commit raises ``CheckpointFenced`` as is."""
        self.wait_staged()
        if self.in_flight:
            self._dcp.hurries.hurry_write()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            if raise_errors and isinstance(err, CheckpointFenced):
                raise err
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
        except CheckpointFenced as e:
            self._error = e  # logged where it was refused
        except BaseException as e:
            self._error = self._fenced_instead(e, args[0])

    def _fenced_instead(self, error: BaseException, step: int) -> BaseException:
        """A save that failed while a newer attempt's fence exists was that attempt's doing
        (its start-up removes an older attempt's temp folders): refused, not failed."""
        if self.epoch is not None:
            try:
                tmp = commit.tmp_dir(self.directory, step, self.epoch)
                fencing.check(self.directory, self.epoch, step, tmp)
            except CheckpointFenced as refused:
                return refused
        log.error("checkpoint save of step %s failed: %s", step, error)
        return error

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
        tmp = commit.tmp_dir(self.directory, step, self.epoch)
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
            if self.hooks.after_write is not None:
                self.hooks.after_write(step)
        except BaseException as e:
            # Tell rank 0 at once rather than let it wait out the commit timeout.
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
        all_files = gather_parts(tmp, self.world_size, self.settings.commit_timeout)
        if sharded:
            fsync_dir(tmp / sharded_io.DCP_DIR)
        if self.hooks.before_commit is not None:
            self.hooks.before_commit(step)
        record = commit.manifest(step, self.world_size, all_files, metric=metric, meta=meta,
                                 sharded=sharded, epoch=self.epoch)  # fmt: skip
        final = commit.commit(tmp, self.directory, record, self.hooks.before_rename)
        info = CheckpointInfo(
            step=step,
            path=final,
            committed_at=record["committed_at"],
            bytes=sum(int(e["bytes"]) for e in all_files.values()),
            seconds=time.monotonic() - t0,
            metric=metric,
            meta=meta,
        )
        log.info("checkpoint step %d committed (%d bytes, %.2fs)", step, info.bytes, info.seconds)
        self.prune()
        if self.hooks.on_commit is not None:
            try:
                self.hooks.on_commit(info)
            except Exception:
                log.exception("checkpoint commit callback failed")
        return info

    def prune(self) -> list[int]:
        """Delete committed checkpoints beyond the newest ``keep`` (and the best); rank 0."""
        s = self.settings
        return commit.prune(self.directory, s.keep, s.keep_best, self.epoch)
