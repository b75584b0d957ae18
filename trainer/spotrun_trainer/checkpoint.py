"""Checkpoint manager: one manager over dicts of Stateful parts, ``step-N`` folders.

Layout of a committed checkpoint (all ranks share the folder)::

    step-<N>/shared.pt      state replicated across DDP ranks, written once by rank 0
    step-<N>/rank-<r>.pt    per-rank state (RNG), written by rank r
    step-<N>/part-<r>.json  what rank r wrote, with sha256 and size
    step-<N>/COMMITTED      manifest of every file with checksums, written and fsync'd last

Why plain ``torch.save`` and not torch.distributed.checkpoint (DCP): under DDP every
rank holds an identical replica, so DCP would buy nothing but its planner; one file per
role lets us checksum each file, load without a process group (tools, S3 restore) and
resume with another world size. A sharded (FSDP) model would want DCP instead.

Commit protocol: every rank writes into ``.tmp-step-N/``, fsyncs its files and then a
part file; rank 0 waits for all parts (files on the shared volume, never a collective, so
it can run in a background thread beside training collectives), writes the manifest,
fsyncs the folder, renames it to ``step-N`` and fsyncs the parent. A folder named
``step-N`` therefore always holds complete files, and one without a valid manifest is
never loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from spotrun_trainer import contract
from spotrun_trainer.checkpoint_io import (
    DELETING_PREFIX,
    FORMAT_VERSION,
    QUARANTINE_PREFIX,
    SHARED_FILE,
    TMP_PREFIX,
    committed_steps,
    fsync_dir,
    now_rfc3339,
    read_marker,
    remove_dir,
    snapshot,
    verify,
    write_json,
    write_torch,
)
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


class CheckpointError(RuntimeError):
    """A save that could not be committed, or a checkpoint that cannot be loaded."""


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
    parts (RNG) are written by every rank. With ``async_save`` the state is copied to CPU
    memory on the caller's thread and written by a background thread; a new save first
    waits for the one in flight.
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

    def _pick(self) -> int | None:
        """Rank 0: the newest intact checkpoint, quarantining damaged ones on the way."""
        for attempt in ("local", "restored"):
            for step, path in reversed(committed_steps(self.directory)):
                reason = verify(path, step)
                if reason is None:
                    return step
                quarantine = path.with_name(f"{QUARANTINE_PREFIX}{path.name}.{int(time.time())}")
                log.error(
                    "checkpoint %s is damaged (%s); moved to %s, falling back to the previous one",
                    path,
                    reason,
                    quarantine.name,
                )
                with contextlib.suppress(OSError):
                    os.rename(path, quarantine)
            if attempt == "local" and self.restore_missing is not None:
                log.info("no intact checkpoint in %s; trying the remote mirror", self.directory)
                try:
                    self.restore_missing(self.directory)
                except Exception:
                    log.exception("restoring from the remote mirror failed")
            else:
                break
        return None

    def load(
        self,
        shared: Mapping[str, Stateful],
        per_rank: Mapping[str, Stateful],
        map_location: str | torch.device = "cpu",
    ) -> CheckpointInfo | None:
        """Load the newest intact checkpoint into the parts; None when there is none."""
        step = self._pick() if self.rank == 0 else None
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
    ) -> float:
        """Start (async) or do (sync) a save; returns the seconds the caller was blocked."""
        t0 = time.monotonic()
        self.wait(raise_errors=False)
        shared_sd = {k: v.state_dict() for k, v in shared.items()} if self.rank == 0 else {}
        rank_sd = {k: v.state_dict() for k, v in per_rank.items()}
        args = (step, shared_sd, rank_sd, metric, dict(meta or {}), t0)
        self._result, self._error = None, None
        if self.async_save:
            memo: dict[tuple[Any, ...], torch.Tensor] = {}
            args = (step, snapshot(shared_sd, memo), snapshot(rank_sd, memo), metric,
                    dict(meta or {}), t0)  # fmt: skip
            self._thread = threading.Thread(
                target=self._run, args=args, name=f"ckpt-save-{step}", daemon=True
            )
            self._thread.start()
        else:
            self._run(*args)
        self.last_stall_seconds = time.monotonic() - t0
        return self.last_stall_seconds

    def wait(self, raise_errors: bool = True) -> CheckpointInfo | None:
        """Block until the save in flight is done; its info on rank 0 (None elsewhere)."""
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
    ) -> CheckpointInfo | None:
        tmp = self.directory / f"{TMP_PREFIX}{contract.step_dir_name(step)}"
        tmp.mkdir(parents=True, exist_ok=True)
        part = tmp / f"part-{self.rank}.json"
        try:
            files: dict[str, Any] = {}
            if self.rank == 0:
                files[SHARED_FILE] = write_torch(tmp / SHARED_FILE, shared_sd)
            files[f"rank-{self.rank}.pt"] = write_torch(tmp / f"rank-{self.rank}.pt", rank_sd)
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
        all_files = self._gather_parts(tmp)
        if self.before_commit is not None:
            self.before_commit(step)
        committed_at = now_rfc3339()
        write_json(
            tmp / contract.COMMIT_MARKER,
            {
                "format": FORMAT_VERSION,
                "step": step,
                "world_size": self.world_size,
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

    def _gather_parts(self, tmp: Path) -> dict[str, Any]:
        deadline = time.monotonic() + self.commit_timeout
        pending = set(range(self.world_size))
        files: dict[str, Any] = {}
        delay = 0.005
        while pending:
            for r in sorted(pending):
                try:
                    part = json.loads((tmp / f"part-{r}.json").read_text())
                except (OSError, ValueError):
                    continue  # not there yet, or being written
                if "error" in part:
                    raise CheckpointError(f"save abandoned: {part['error']}")
                files.update(part["files"])
                pending.discard(r)
            if pending:
                if time.monotonic() > deadline:
                    raise CheckpointError(f"ranks {sorted(pending)} did not write their part")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        return files

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
