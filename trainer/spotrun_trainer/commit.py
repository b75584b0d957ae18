"""spotrun's commit protocol, its retention and its start-up clean-up: one implementation.

A save is written into ``<dir>/.tmp-step-N/``; :func:`commit` writes the ``COMMITTED``
manifest (every file's size and sha256) last, fsyncs the folder, renames it to
``step-N`` and fsyncs the parent. A folder named ``step-N`` therefore always holds
complete files, a kill at any moment leaves at most a ``.tmp-`` folder (dropped by
:func:`prepare` at the next start), and a folder without the marker is never resumed from.

:class:`spotrun_trainer.checkpoint.CheckpointManager` commits what the ranks wrote;
:func:`commit_folder` commits a folder another framework wrote (Hugging Face
``Trainer``, sentence-transformers) into the same layout. :func:`prune` and
:func:`newest_committed` serve both.

With an epoch (the attempt, ``SPOTRUN_ATTEMPT``) every function here is fenced
(fencing.py): :func:`prepare` moves the fence, :func:`commit` refuses to commit for an
attempt older than the fence, and :func:`newest_committed` and :func:`prune` see only
what the fence lets load. Without one (outside the operator) nothing changes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_api.contract import Fence
from spotrun_trainer import fencing
from spotrun_trainer.checkpoint_io import (
    DELETING_PREFIX,
    FORMAT_VERSION,
    SHARED_FILE,
    TMP_PREFIX,
    CheckpointError,
    Listing,
    committed_steps,
    fsync_dir,
    newest_intact,
    now_rfc3339,
    read_marker,
    remove_dir,
    sha256_file,
    write_json,
    write_torch,
)

__all__ = [
    "commit",
    "commit_folder",
    "manifest",
    "newest_committed",
    "prepare",
    "prune",
    "tmp_dir",
]

log = logging.getLogger(__name__)


def tmp_dir(directory: Path, step: int, epoch: int | None = None) -> Path:
    """Where the save of ``step`` is written before its commit. Each attempt (``epoch``)
    writes into a folder of its own, so a rank of an older attempt that still runs never
    adds its files to a newer attempt's save of the same step."""
    tag = "" if epoch is None else f"e{epoch}-"
    return directory / f"{TMP_PREFIX}{tag}{contract.step_dir_name(step)}"


def prepare(directory: Path, epoch: int | None = None) -> Fence | None:
    """Create ``directory``; with an ``epoch``, move the fence first (fencing.advance);
    then drop leftovers of interrupted saves and prunes (an older attempt's too: it can
    no longer commit). The newest fence (None without an epoch); when it is a newer
    attempt's, this one is fenced and nothing is touched."""
    directory.mkdir(parents=True, exist_ok=True)
    fence = fencing.advance(directory, epoch) if epoch is not None else None
    if fence is not None and epoch is not None and fence.epoch > epoch:
        return fence
    for entry in directory.iterdir():
        if entry.name.startswith((TMP_PREFIX, DELETING_PREFIX)):
            log.info("removing leftover of an interrupted save or prune: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
    return fence


def _listing(epoch: int | None) -> Listing:
    return committed_steps if epoch is None else fencing.loadable_steps


def newest_committed(directory: Path, epoch: int | None = None) -> Path | None:
    """The newest intact ``step-N`` folder; damaged ones are renamed ``corrupt-…`` (kept for
    inspection) and skipped. Folders without the ``COMMITTED`` marker are never considered,
    nor (with an ``epoch``) those the fence does not accept."""
    step = newest_intact(directory, _listing(epoch))
    return None if step is None else directory / contract.step_dir_name(step)


def manifest(
    step: int,
    world_size: int,
    files: Mapping[str, Any],
    *,
    metric: float | None = None,
    meta: Mapping[str, Any] | None = None,
    sharded: bool | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """The ``COMMITTED`` record of a save (``sharded`` only where the writer knows it;
    ``epoch``, the attempt that writes it, only when fenced)."""
    record: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "step": step,
        "world_size": world_size,
        "committed_at": now_rfc3339(),
        "metric": metric,
        "meta": dict(meta or {}),
        "files": dict(files),
    }
    if sharded is not None:
        record["sharded"] = sharded
    if epoch is not None:
        record[contract.MANIFEST_EPOCH] = epoch
    return record


def commit(
    tmp: Path,
    directory: Path,
    record: Mapping[str, Any],
    before_rename: Callable[[int], object] | None = None,
) -> Path:
    """Write the manifest ``record`` into ``tmp`` (whose files are all fsync'd), fsync it,
    rename it to ``step-N`` and fsync ``directory``; the committed folder.

    A record with an epoch is fenced: the fence is read before the manifest is written
    and again just before the rename, and a newer one raises ``CheckpointFenced`` with
    ``tmp`` removed. ``before_rename`` (tests: a committer that stalls after its check)
    runs between that check and the rename."""
    step = int(record["step"])
    epoch = record.get(contract.MANIFEST_EPOCH)
    if epoch is not None:
        fencing.check(directory, epoch, step, tmp)
    write_json(tmp / contract.COMMIT_MARKER, record)
    fsync_dir(tmp)
    if epoch is not None:
        fencing.check(directory, epoch, step, tmp)
    if before_rename is not None:
        before_rename(step)
    final = directory / contract.step_dir_name(step)
    _rename_into_place(tmp, final, step, epoch)
    fsync_dir(directory)
    return final


def _rename_into_place(tmp: Path, final: Path, step: int, epoch: int | None) -> None:
    """Rename ``tmp`` to ``final``, replacing a damaged, half-written or superseded copy of
    the same step, but never one a newer attempt wrote (this attempt is then fenced). A
    copy that lands in between (another attempt's commit of the same step) is replaced
    on the second try."""
    for last in (False, True):
        if final.exists():
            ident = fencing.identify(final) if epoch is not None else None
            if epoch is not None and ident is not None and ident[0] > epoch:
                fencing.drop(tmp)
                newest = max(ident[0], fencing.newest_epoch(final.parent) or 0)
                raise fencing.fenced(final.parent, step, epoch, newest)
            remove_dir(final)
        try:
            os.rename(tmp, final)
            return
        except OSError as e:
            if last or e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def prune(
    directory: Path, keep: int, keep_best: bool = False, epoch: int | None = None
) -> list[int]:
    """Delete committed checkpoints beyond the newest ``keep`` (at least one), and with
    ``keep_best`` spare the one with the lowest metric; the steps removed, oldest first.

    With an ``epoch`` only the checkpoints the fence lets load count and are kept; those
    it never will are deleted; one a newer attempt wrote is never touched, and an attempt
    that is fenced prunes nothing (the fence itself is never pruned)."""
    steps, rejected = _prune_candidates(directory, epoch)
    protected = {s for s, _ in steps[-max(keep, 1) :]}
    if keep_best:
        scored = [
            (m["metric"], s)
            for s, p in steps
            if (m := read_marker(p)) is not None and m.get("metric") is not None
        ]
        if scored:
            protected.add(min(scored)[1])
    doomed = sorted([(s, p) for s, p in steps if s not in protected] + rejected)
    for _, p in doomed:
        remove_dir(p)
    if doomed:
        fsync_dir(directory)
    return [s for s, _ in doomed]


def _prune_candidates(
    directory: Path, epoch: int | None
) -> tuple[list[tuple[int, Path]], list[tuple[int, Path]]]:
    """(checkpoints retention chooses among, checkpoints the fence rejects), oldest first."""
    steps = committed_steps(directory)
    if epoch is None:
        return steps, []
    try:
        fence = fencing.read(directory)
    except CheckpointError as e:
        log.error("not pruning %s: %s", directory, e)
        return [], []
    if fence is not None and fence.epoch > epoch:
        return [], []
    kept: list[tuple[int, Path]] = []
    rejected: list[tuple[int, Path]] = []
    for s, p in steps:
        ident = fencing.identify(p)
        if ident is not None and ident[0] > epoch:
            continue  # a newer attempt's (its fence landed after ours was read)
        (kept if fencing.accepts(fence, s, p) else rejected).append((s, p))
    return kept, rejected


def _move(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError:  # another file system: copy, then drop the source
        shutil.copytree(src, dst)
        shutil.rmtree(src, ignore_errors=True)


def _fsync_tree(root: Path) -> dict[str, Any]:
    """fsync every file and folder under ``root``; ``{relative path: {sha256, bytes}}``."""
    files: dict[str, Any] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            rel = path.relative_to(root).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        fsync_dir(Path(folder))
    return files


def commit_folder(
    src: Path,
    directory: Path,
    step: int,
    *,
    world_size: int = 1,
    metric: float | None = None,
    meta: Mapping[str, Any] | None = None,
    epoch: int | None = None,
) -> Path:
    """Move the finished save ``src`` that another framework wrote into ``directory`` as the
    committed ``step-<step>``, with ``shared.pt`` (spotrun's small record of the save);
    fenced with an ``epoch`` (:func:`commit`)."""
    tmp = tmp_dir(directory, step, epoch)
    if tmp.exists():
        shutil.rmtree(tmp)
    directory.mkdir(parents=True, exist_ok=True)
    _move(src, tmp)
    files = {SHARED_FILE: write_torch(tmp / SHARED_FILE, {"step": step, "meta": dict(meta or {})})}
    files.update({k: v for k, v in _fsync_tree(tmp).items() if k != SHARED_FILE})
    record = manifest(step, world_size, files, metric=metric, meta=meta, epoch=epoch)
    return commit(tmp, directory, record)
