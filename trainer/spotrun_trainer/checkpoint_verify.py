"""Checking a committed checkpoint against its manifest, without torch.

``verify`` hashes a checkpoint's files in parallel (hashlib and file reads release the GIL,
so threads use as many cores as there are files). ``verify_ahead`` starts that check of the
newest checkpoints in a background thread at process start, before torch is imported: on
rank 0 the load then takes the verdict instead of reading every byte a second time while
the other ranks wait for it. A verdict is used once, by the load of the same process, and
only when no file of the folder changed since (size, mtime and inode of each, and of the
manifest); otherwise the load verifies as it always did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotrun_api import contract

log = logging.getLogger("spotrun_trainer.checkpoint")

SHARED_FILE = "shared.pt"
HASH_THREADS = min(8, os.cpu_count() or 1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_marker(step_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((step_dir / contract.COMMIT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def committed_steps(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of folders named ``step-N`` holding a marker, oldest first."""
    out: list[tuple[int, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            step = contract.parse_step_dir(entry.name)
            if step is not None and (entry / contract.COMMIT_MARKER).is_file():
                out.append((step, entry))
    return sorted(out)


def _digest(path: Path) -> str | OSError:
    try:
        return sha256_file(path)
    except OSError as e:
        return e


def verify(step_dir: Path, step: int | None = None) -> str | None:
    """None when the checkpoint is complete and intact, else why it is not (the first
    failing file in name order)."""
    marker = read_marker(step_dir)
    if marker is None:
        return f"{contract.COMMIT_MARKER} missing or unreadable"
    if step is not None and marker.get("step") != step:
        return f"manifest says step {marker.get('step')}, folder says {step}"
    files = marker.get("files")
    if not isinstance(files, dict) or SHARED_FILE not in files:
        return "manifest lists no files"
    names = sorted(files)
    for name in names:  # sizes first: a missing or short file fails without any hashing
        try:
            size = (step_dir / name).stat().st_size
        except OSError:
            return f"{name} missing"
        if size != files[name].get("bytes"):
            return f"{name} has {size} bytes, manifest says {files[name].get('bytes')}"
    paths = [step_dir / name for name in names]
    if len(paths) > 1 and HASH_THREADS > 1:
        with ThreadPoolExecutor(min(HASH_THREADS, len(paths)), "ckpt-verify") as pool:
            digests = list(pool.map(_digest, paths))
    else:
        digests = [_digest(p) for p in paths]
    for name, digest in zip(names, digests, strict=True):
        if isinstance(digest, OSError):
            return f"{name} unreadable: {digest}"
        if digest != files[name].get("sha256"):
            return f"{name} fails its sha256 checksum"
    return None


# --- ahead of the load ---------------------------------------------------------------------


def _fingerprint(step_dir: Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """What identifies the folder's bytes without reading them; None when unreadable."""
    marker = read_marker(step_dir)
    files = marker.get("files") if marker else None
    names = [contract.COMMIT_MARKER, *sorted(files)] if isinstance(files, dict) else []
    try:
        stats = [(n, (step_dir / n).stat()) for n in names]
    except OSError:
        return None
    return tuple((n, s.st_size, s.st_mtime_ns, s.st_ino) for n, s in stats) or None


@dataclass
class _Verdict:
    done: threading.Event = field(default_factory=threading.Event)
    fingerprint: tuple[tuple[str, int, int, int], ...] | None = None
    reason: str | None = None


_verdicts: dict[Path, _Verdict] = {}
_verdicts_lock = threading.Lock()


def verify_ahead(directory: str | Path) -> threading.Thread:
    """Verify the newest committed checkpoints in ``directory`` (newest first, until one is
    intact) in a daemon thread; ``verdict`` hands each result to the load. Read-only: a
    damaged one is quarantined by the load, as before."""
    folder = Path(directory)
    steps = list(reversed(committed_steps(folder)))
    pending = []
    with _verdicts_lock:
        for _, path in steps:
            pending.append(_verdicts.setdefault(path, _Verdict()))

    def run() -> None:
        for (step, path), entry in zip(steps, pending, strict=True):
            try:
                entry.fingerprint = _fingerprint(path)
                entry.reason = verify(path, step)
            except Exception as e:  # the load then verifies for itself
                entry.fingerprint = None
                log.debug("verifying %s ahead failed: %s", path, e)
            entry.done.set()
            if entry.reason is None and entry.fingerprint is not None:
                break
        for entry in pending:  # the older ones are left to the load
            entry.done.set()

    thread = threading.Thread(target=run, name="ckpt-verify-ahead", daemon=True)
    thread.start()
    return thread


def verdict(step_dir: Path, step: int) -> str | None:
    """``verify(step_dir, step)``, from the check made ahead when there is a valid one (it
    is waited for while it runs, and used once), else made now."""
    with _verdicts_lock:
        entry = _verdicts.pop(step_dir, None)
    if entry is not None:
        entry.done.wait()
        if entry.fingerprint is not None and entry.fingerprint == _fingerprint(step_dir):
            return entry.reason
    return verify(step_dir, step)
