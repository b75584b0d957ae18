"""Fenced checkpoints: a rank of an older attempt can no longer commit, and a checkpoint it
finishes after the fence moved is never loaded (docs/trainer.md, "Fenced checkpoints").

Every attempt is an epoch (``SPOTRUN_ATTEMPT``); outside the operator there is none and
nothing here runs. Rank 0 of a new attempt, before it loads anything, writes its fence
(:func:`advance`): ``<dir>/fence/<E>.json`` naming the checkpoints of older epochs it
accepts, those committed at that moment. From then on:

- a committer of an older epoch reads the fence before it writes its manifest and again
  just before its rename (:func:`check`); a newer fence makes it drop its temp folder and
  raise :class:`CheckpointFenced`, which leaves the process with ``EXIT_FENCED``;
- the loader and the pruner see only what the fence accepts (:func:`loadable_steps`): a
  checkpoint of an older epoch that is not in the accepted list (one that passed its
  check, then renamed after the fence moved) is never loaded, and pruning deletes it.

A fence file is never rewritten by another attempt, so the fence only moves forward with
no compare-and-swap: the fence is the file with the highest epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_api.contract import AcceptedCheckpoint, Fence
from spotrun_trainer.checkpoint_io import (
    CheckpointError,
    committed_steps,
    fsync_dir,
    now_rfc3339,
    pick_intact,
    write_json,
)
from spotrun_trainer.launcher import record_exit
from spotrun_trainer.pod_io import write_termination_message

__all__ = [
    "CheckpointFenced",
    "accept",
    "advance",
    "check",
    "fenced",
    "loadable_steps",
    "newest_epoch",
    "read",
    "refused_by",
]

log = logging.getLogger("spotrun_trainer.checkpoint")


class CheckpointFenced(SystemExit):
    """A newer attempt moved the fence: this attempt may not commit. A ``SystemExit`` with
    code ``EXIT_FENCED``, so every front door (the CLI, a plain loop, the Hugging Face
    ``Trainer``) leaves with that code unless it catches it on purpose; ``except
    Exception`` in a user's loop does not swallow it."""

    def __init__(self, message: str, *, epoch: int, fence_epoch: int, step: int | None) -> None:
        super().__init__(contract.EXIT_FENCED)
        self.message = message
        self.epoch, self.fence_epoch, self.step = epoch, fence_epoch, step

    def __str__(self) -> str:
        return self.message


# (checkpoint folder, epoch) -> the fence epoch that refused a commit of this process. A
# commit refused in the writer thread reaches the loop's next boundary through it, where
# every rank agrees to leave (core.TrainerCore.agree).
_refusals: dict[tuple[str, int], int] = {}
_refusals_lock = threading.Lock()


def refused_by(directory: str | Path, epoch: int) -> int | None:
    """The fence epoch that refused a commit of attempt ``epoch`` in this process."""
    if not _refusals:  # every step asks: no path resolution until something was refused
        return None
    with _refusals_lock:
        return _refusals.get((str(Path(directory).resolve()), epoch))


def fenced(
    directory: Path, step: int | None, epoch: int, fence_epoch: int, what: str = ""
) -> CheckpointFenced:
    """Log the refusal, leave its code for launcher mode and the termination message, and
    return the exception to raise."""
    what = what or f"commit of step {step} refused"
    message = (
        f"{what}: fenced by attempt {fence_epoch} (this is attempt {epoch}); "
        f"exiting {contract.EXIT_FENCED}"
    )
    log.error("%s", message)
    with _refusals_lock:
        _refusals[(str(directory.resolve()), epoch)] = fence_epoch
    record_exit(contract.EXIT_FENCED)
    write_termination_message(message)
    return CheckpointFenced(message, epoch=epoch, fence_epoch=fence_epoch, step=step)


# --- reading the fence ------------------------------------------------------------------


def _folder(directory: Path) -> Path:
    return directory / contract.FENCE_DIR


def newest_epoch(directory: Path) -> int | None:
    """Epoch of the newest fence, from the file names alone (one listing)."""
    try:
        names = os.listdir(_folder(directory))
    except FileNotFoundError:
        return None
    return max((e for n in names if (e := contract.parse_fence_file(n)) is not None), default=None)


def read(directory: Path) -> Fence | None:
    """The newest fence; None when there is none. A fence file that cannot be read is an
    error, never taken for no fence."""
    epoch = newest_epoch(directory)
    if epoch is None:
        return None
    path = _folder(directory) / contract.fence_file_name(epoch)
    try:
        fence = Fence.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"fence {path} is unreadable: {e}") from e
    if fence.epoch != epoch:
        raise CheckpointError(f"fence {path} says epoch {fence.epoch}")
    return fence


def identify(step_dir: Path) -> tuple[int, str] | None:
    """(epoch, sha256 of the manifest) of a committed folder; None when its manifest
    cannot be read. A manifest without an epoch (written outside the operator, or before
    fencing) is epoch 0: older than every attempt."""
    try:
        data = (step_dir / contract.COMMIT_MARKER).read_bytes()
        marker: Any = json.loads(data)
    except (OSError, ValueError):
        return None
    epoch = marker.get(contract.MANIFEST_EPOCH) if isinstance(marker, dict) else None
    return (epoch if isinstance(epoch, int) else 0), hashlib.sha256(data).hexdigest()


def accepts(fence: Fence | None, step: int, step_dir: Path) -> bool:
    """The fence lets this committed folder be loaded (one whose manifest cannot be read
    goes on to verification, which rejects it and says why)."""
    if fence is None:
        return True
    ident = identify(step_dir)
    return ident is None or fence.accepts(step, *ident)


def loadable_steps(directory: Path) -> list[tuple[int, Path]]:
    """``committed_steps`` that the newest fence accepts, oldest first; each one it does
    not is logged (it is never loaded, and pruning deletes it)."""
    fence = read(directory)
    out = []
    for step, path in committed_steps(directory):
        if accepts(fence, step, path):
            out.append((step, path))
        else:
            assert fence is not None
            log.warning(
                "skipping %s: written by attempt %s after attempt %d moved the fence "
                "(never loaded)",
                path.name,
                (identify(path) or (0, ""))[0],
                fence.epoch,
            )
    return out


# --- moving the fence -----------------------------------------------------------------------


def pick(
    directory: Path, epoch: int, restore_missing: Callable[[Path], object] | None
) -> int | None:
    """The newest intact step the fence accepts (checkpoint_io.pick_intact over
    :func:`loadable_steps`); a checkpoint ``restore_missing`` restores (the mirror, into a
    folder that had none) is accepted by attempt ``epoch``'s fence: it was not there when
    the fence moved."""
    if restore_missing is None:
        return pick_intact(directory, None, loadable_steps)
    fill = restore_missing

    def restore_and_accept(folder: Path) -> object:
        restored = fill(folder)
        if isinstance(restored, int):
            accept(folder, epoch, restored)
        return restored

    return pick_intact(directory, restore_and_accept, loadable_steps)


def _write(directory: Path, fence: Fence) -> None:
    """Temp file, fsync, rename, fsync of the folder (and of ``directory`` when the folder
    is new): the fence is there whole or not at all."""
    folder = _folder(directory)
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        fsync_dir(directory)
    name = contract.fence_file_name(fence.epoch)
    tmp = folder / f".tmp-{name}"
    write_json(tmp, fence.to_json())
    os.rename(tmp, folder / name)
    fsync_dir(folder)


def advance(directory: Path, epoch: int) -> Fence:
    """Rank 0 of attempt ``epoch``, before it loads anything: write this attempt's fence,
    accepting the committed checkpoints present now that the previous fence accepted.
    Once per attempt (a second call returns the fence written). The newest fence, which
    is a newer attempt's when this one is already fenced (then nothing is written)."""
    previous = read(directory)
    if previous is not None and previous.epoch >= epoch:
        return previous
    accepted = []
    for step, path in committed_steps(directory):
        ident = identify(path)
        if ident is not None and (previous is None or previous.accepts(step, *ident)):
            accepted.append(AcceptedCheckpoint(step, ident[0], ident[1]))
    fence = Fence(epoch, tuple(accepted), now_rfc3339())
    _write(directory, fence)
    log.info(
        "attempt %d moved the fence: checkpoints of older attempts accepted: %s",
        epoch,
        [a.step for a in accepted] or "none",
    )
    return fence


def accept(directory: Path, epoch: int, step: int) -> None:
    """Add ``step-<step>``, restored from the remote mirror after the fence moved, to the
    fence of attempt ``epoch`` (only while that fence is the newest)."""
    fence = read(directory)
    ident = identify(directory / contract.step_dir_name(step))
    if fence is None or fence.epoch != epoch or ident is None:
        return
    if fence.accepts(step, *ident):
        return
    entry = AcceptedCheckpoint(step, ident[0], ident[1])
    _write(directory, replace(fence, accepted=(*fence.accepted, entry)))
    log.info("fence of attempt %d now accepts %s (restored from the mirror)", epoch, step)


def check(directory: Path, epoch: int, step: int, tmp: Path | None = None) -> None:
    """The committer's check: raise :class:`CheckpointFenced` (after removing ``tmp``,
    the save's temp folder) when a newer attempt's fence exists."""
    newest = newest_epoch(directory)
    if newest is not None and newest > epoch:
        if tmp is not None:
            drop(tmp)
        raise fenced(directory, step, epoch, newest)


def drop(tmp: Path) -> None:
    """Remove a refused save's temp folder."""
    with contextlib.suppress(OSError):
        shutil.rmtree(tmp)
