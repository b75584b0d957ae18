"""Durable file I/O of checkpoints: fsync'd writes with checksums, manifest checks, snapshots.

Kept apart from the manager so tools (and the S3 mirror) can verify a checkpoint folder
without a training process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from spotrun_trainer.checkpoint_verify import (
    SHARED_FILE,
    committed_steps,
    read_marker,
    sha256_file,
    verdict,
    verify,
)

__all__ = ["SHARED_FILE", "committed_steps", "read_marker", "sha256_file", "verify"]

log = logging.getLogger("spotrun_trainer.checkpoint")

FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
DELETING_PREFIX = ".deleting-"
QUARANTINE_PREFIX = "corrupt-"


class CheckpointError(RuntimeError):
    """A save that could not be committed, or a checkpoint that cannot be loaded."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """File wrapper that hashes bytes on their way to disk (no second read)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def write_torch(path: Path, obj: Any) -> dict[str, Any]:
    """torch.save ``obj`` to ``path``, fsync it; its size and sha256."""
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        torch.save(obj, w)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": w.sha.hexdigest(), "bytes": w.size}


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def file_entry(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file already written (and fsync'd) by someone else (DCP)."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot(obj: Any, _memo: dict[tuple[Any, ...], torch.Tensor] | None = None) -> Any:
    """A deep copy of a state dict whose tensors live in CPU memory, detached from training.

    Aliases stay aliases (tied embeddings are saved once, as torch.save would).
    """
    memo = {} if _memo is None else _memo
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key not in memo:
            memo[key] = t.clone() if t.device.type == "cpu" else t.to("cpu")
        return memo[key]
    if isinstance(obj, dict):
        return {k: snapshot(v, memo) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot(v, memo) for v in obj)
    return obj


def remove_dir(path: Path) -> None:
    """Rename first (atomic: the name stops matching at once), then delete."""
    doomed = path.with_name(f"{DELETING_PREFIX}{path.name}.{time.time_ns()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


Listing = Callable[[Path], list[tuple[int, Path]]]


def newest_intact(directory: Path, listing: Listing = committed_steps) -> int | None:
    """The newest committed step (of those ``listing`` offers: the fence's, when fenced)
    whose files verify; damaged ones are renamed ``corrupt-…`` (kept for inspection) on
    the way and skipped (a verdict reached ahead of the load is taken: checkpoint_verify)."""
    for step, path in reversed(listing(directory)):
        reason = verdict(path, step)
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
    return None


def pick_intact(
    directory: Path,
    restore_missing: Callable[[Path], object] | None,
    listing: Listing = committed_steps,
) -> int | None:
    """Rank 0: the newest intact checkpoint, quarantining damaged ones on the way; when
    none is intact, ``restore_missing`` (the S3 mirror) gets one chance to fill the folder."""
    step = newest_intact(directory, listing)
    if step is not None or restore_missing is None:
        return step
    log.info("no intact checkpoint in %s; trying the remote mirror", directory)
    try:
        restore_missing(directory)
    except Exception:
        log.exception("restoring from the remote mirror failed")
    return newest_intact(directory, listing)


def gather_parts(tmp: Path, world_size: int, timeout: float) -> dict[str, Any]:
    """Rank 0: wait for every rank's ``part-<r>.json`` (files, not a collective, so it runs
    beside training collectives); the union of the files they list."""
    deadline = time.monotonic() + timeout
    pending = set(range(world_size))
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
            time.sleep(delay)  # polling interval of the parts
            delay = min(delay * 2, 0.1)
    return files
