"""spotrun's commit protocol for checkpoint folders another framework writes.

A framework (Hugging Face ``Trainer``, sentence-transformers) saves its own files into a
folder of its own. :func:`commit_folder` moves that folder to ``<dir>/.tmp-step-N/``,
fsyncs every file, adds ``shared.pt`` (spotrun's small record of the save), writes the
``COMMITTED`` manifest with every file's size and sha256, and renames the folder to
``step-N``: the same layout and guarantees as :class:`spotrun_trainer.checkpoint.
CheckpointManager` (a folder named ``step-N`` always holds complete files, a kill at any
moment leaves at most a ``.tmp-`` folder, a folder without the marker is never resumed
from). :func:`newest_committed` picks the folder to resume from, verifying checksums and
falling back past damaged ones, as the manager does.
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

__all__ = ["commit_folder", "newest_committed", "prepare", "prune", "read_marker"]

log = logging.getLogger(__name__)


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
    """Move the finished save ``src`` into ``directory`` as the committed ``step-<step>``."""
    tmp = directory / f"{TMP_PREFIX}{contract.step_dir_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    directory.mkdir(parents=True, exist_ok=True)
    _move(src, tmp)
    record = {"step": step, "meta": dict(meta or {})}
    files = {SHARED_FILE: write_torch(tmp / SHARED_FILE, record)}
    files.update({k: v for k, v in _fsync_tree(tmp).items() if k != SHARED_FILE})
    write_json(
        tmp / contract.COMMIT_MARKER,
        {
            "format": FORMAT_VERSION,
            "step": step,
            "world_size": world_size,
            "committed_at": now_rfc3339(),
            "metric": metric,
            "meta": dict(meta or {}),
            "files": files,
        },
    )
    fsync_dir(tmp)
    final = directory / contract.step_dir_name(step)
    if final.exists():  # a half-written or superseded folder of the same step
        remove_dir(final)
    os.rename(tmp, final)
    fsync_dir(directory)
    return final


def prune(directory: Path, keep: int) -> list[int]:
    """Delete committed checkpoints beyond the newest ``keep``; the steps removed."""
    steps = committed_steps(directory)
    removed = []
    for step, path in steps[: max(0, len(steps) - max(keep, 1))]:
        remove_dir(path)
        removed.append(step)
    if removed:
        fsync_dir(directory)
    return removed
