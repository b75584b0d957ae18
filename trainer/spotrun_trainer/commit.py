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
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_trainer.checkpoint_io import (
    DELETING_PREFIX,
    FORMAT_VERSION,
    SHARED_FILE,
    TMP_PREFIX,
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


def tmp_dir(directory: Path, step: int) -> Path:
    """Where the save of ``step`` is written before its commit."""
    return directory / f"{TMP_PREFIX}{contract.step_dir_name(step)}"


def prepare(directory: Path) -> None:
    """Create ``directory`` and drop leftovers of interrupted saves and prunes."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.name.startswith((TMP_PREFIX, DELETING_PREFIX)):
            log.info("removing leftover of an interrupted save or prune: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def newest_committed(directory: Path) -> Path | None:
    """The newest intact ``step-N`` folder; damaged ones are renamed ``corrupt-…`` (kept for
    inspection) and skipped. Folders without the ``COMMITTED`` marker are never considered."""
    step = newest_intact(directory)
    return None if step is None else directory / contract.step_dir_name(step)


def manifest(
    step: int,
    world_size: int,
    files: Mapping[str, Any],
    *,
    metric: float | None = None,
    meta: Mapping[str, Any] | None = None,
    sharded: bool | None = None,
) -> dict[str, Any]:
    """The ``COMMITTED`` record of a save (``sharded`` only where the writer knows it)."""
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
    return record


def commit(tmp: Path, directory: Path, record: Mapping[str, Any]) -> Path:
    """Write the manifest ``record`` into ``tmp`` (whose files are all fsync'd), fsync it,
    rename it to ``step-N`` and fsync ``directory``; the committed folder."""
    write_json(tmp / contract.COMMIT_MARKER, record)
    fsync_dir(tmp)
    final = directory / contract.step_dir_name(int(record["step"]))
    if final.exists():  # a damaged, half-written or superseded copy of the same step
        remove_dir(final)
    os.rename(tmp, final)
    fsync_dir(directory)
    return final


def prune(directory: Path, keep: int, keep_best: bool = False) -> list[int]:
    """Delete committed checkpoints beyond the newest ``keep`` (at least one), and with
    ``keep_best`` spare the one with the lowest metric; the steps removed, oldest first."""
    steps = committed_steps(directory)
    protected = {s for s, _ in steps[-max(keep, 1) :]}
    if keep_best:
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
        fsync_dir(directory)
    return removed


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
) -> Path:
    """Move the finished save ``src`` that another framework wrote into ``directory`` as the
    committed ``step-<step>``, with ``shared.pt`` (spotrun's small record of the save)."""
    tmp = tmp_dir(directory, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    directory.mkdir(parents=True, exist_ok=True)
    _move(src, tmp)
    files = {SHARED_FILE: write_torch(tmp / SHARED_FILE, {"step": step, "meta": dict(meta or {})})}
    files.update({k: v for k, v in _fsync_tree(tmp).items() if k != SHARED_FILE})
    return commit(tmp, directory, manifest(step, world_size, files, metric=metric, meta=meta))
