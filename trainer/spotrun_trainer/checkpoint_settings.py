"""What a checkpoint manager is built from and what it returns: settings, rank placement,
hooks and the record of a committed checkpoint (the manager is checkpoint.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from spotrun_trainer.pacing import Hurry
from spotrun_trainer.shard_writer import WriterOptions

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


@dataclass(frozen=True)
class CheckpointSettings:
    """How checkpoints are kept and written.

    ``keep`` newest committed checkpoints are kept, and with ``keep_best`` the one with the
    best (lowest) metric. With ``async_save`` the state is copied to CPU memory on the
    caller's thread and written in the background (DCP's thread or process per
    ``async_mode``; the commit by a thread of the manager); a new save first waits for the
    one in flight. ``overlap_staging`` (async, sharded parts): the CPU copy of the sharded
    state runs in a staging thread while training goes on, and the manager blocks the next
    ``optimizer.step`` of each sharded part's ``optimizer`` until that copy is done; see
    ``CheckpointManager.wait_staged``. ``writer``: the background writer's niceness, pace
    and whether ``torch.save`` writes CRC32s in DCP's checkpoint process.
    ``commit_timeout``: how long rank 0 waits for the other ranks' files. ``epoch``: the
    attempt (``SPOTRUN_ATTEMPT``; ``core.checkpoint_settings`` reads it from the env), which
    turns fencing on (fencing.py); None, outside the operator: no fence."""

    keep: int = 3
    keep_best: bool = True
    async_save: bool = False
    async_mode: str = "thread"
    overlap_staging: bool = False
    writer: WriterOptions = field(default_factory=WriterOptions)
    commit_timeout: float = 600.0
    epoch: int | None = None


@dataclass(frozen=True)
class RankPlace:
    """Where this process stands: its rank, the world size, the collectives the manager
    runs on the main thread, and DCP's process group (gloo; None: the default group)."""

    rank: int = 0
    world_size: int = 1
    collectives: Collectives = field(default_factory=LocalCollectives)
    process_group: Any = None


@dataclass(frozen=True)
class CheckpointHooks:
    """What the manager is told and tells. ``hurry`` (``pacing.Hurry``, the stop guard's):
    once raised, paced writes go as fast as they can. ``restore_missing`` (rank 0, the S3
    mirror) may fill an empty folder; ``on_commit`` runs on rank 0 after each commit (in
    the writer thread when saves are async); ``before_commit`` on rank 0 before the
    manifest; ``after_write`` on every rank between its files and its part file;
    ``before_rename`` on rank 0 after the commit's last fence check, just before its
    rename (tests: a committer that stalls there)."""

    hurry: Hurry | None = None
    restore_missing: Callable[[Path], object] | None = None
    on_commit: Callable[[CheckpointInfo], object] | None = None
    before_commit: Callable[[int], object] | None = None
    after_write: Callable[[int], object] | None = None
    before_rename: Callable[[int], object] | None = None
