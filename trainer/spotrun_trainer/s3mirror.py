"""Mirror of committed checkpoints in S3, and restore from it into an empty folder.

EBS volumes are zonal: an attempt rescheduled into another zone gets a new, empty
volume, and the mirror is then the only copy. Uploads keep the local commit order: data
files first, the COMMITTED manifest last, so a remote step without its manifest is an
incomplete upload and is ignored.

Only committed folders are enqueued (the manager's ``on_commit``), so a commit the fence
refused is never mirrored. One of an older attempt that passed its fence check and renamed
after the fence moved is committed but never loaded; the upload reads the fence first and
skips it (fencing.py). A checkpoint restored from the mirror is accepted by the restoring
attempt's fence (the manager does that).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections import deque
from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_trainer import fencing
from spotrun_trainer.checkpoint_io import (
    TMP_PREFIX,
    CheckpointError,
    fsync_dir,
    read_marker,
    verify,
)

log = logging.getLogger(__name__)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


class S3Mirror:
    """Uploads ``step-N`` folders in a background thread and restores the newest one."""

    def __init__(self, uri: str, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client
        self._queue: deque[tuple[Path, int, bool]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.uploaded: list[int] = []

    def _key(self, step: int, name: str = "") -> str:
        parts = [self.prefix, contract.step_dir_name(step), name]
        return "/".join(p for p in parts if p)

    # --- upload ------------------------------------------------------------------------

    def upload(self, step_dir: Path) -> None:
        """Upload one committed folder, manifest last."""
        step = contract.parse_step_dir(step_dir.name)
        if step is None:
            raise ValueError(f"{step_dir} is not a step-N folder")
        names = sorted(p.name for p in step_dir.iterdir() if p.is_file())
        if contract.COMMIT_MARKER not in names:
            raise ValueError(f"{step_dir} is not committed")
        names.remove(contract.COMMIT_MARKER)
        if not self._fence_accepts(step_dir, step):
            log.warning("not mirroring %s: the fence rejects it (never loaded)", step_dir.name)
            return
        for name in [*names, contract.COMMIT_MARKER]:
            self.client.upload_file(str(step_dir / name), self.bucket, self._key(step, name))
        self.uploaded.append(step)
        log.info("mirrored %s to s3://%s/%s", step_dir.name, self.bucket, self._key(step))

    @staticmethod
    def _fence_accepts(step_dir: Path, step: int) -> bool:
        """A folder written with an epoch (fenced) is mirrored only while the fence accepts
        it; one without (outside the operator) always is."""
        if contract.MANIFEST_EPOCH not in (read_marker(step_dir) or {}):
            return True
        try:
            return fencing.accepts(fencing.read(step_dir.parent), step, step_dir)
        except CheckpointError:
            return True  # the loader says what is wrong with the fence

    def enqueue(self, step_dir: Path, keep: int = 0, keep_best: bool = True) -> None:
        """Upload in the background; then prune the mirror to ``keep`` steps (0: no prune)."""
        with self._cond:
            self._queue.append((step_dir, keep, keep_best))
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="s3-mirror", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                step_dir, keep, keep_best = self._queue.popleft()
                self._busy = True
            try:
                self.upload(step_dir)
                if keep > 0:
                    self.prune(keep, keep_best)
            except FileNotFoundError:
                log.info("%s was pruned before its upload; skipped", step_dir.name)
            except Exception:
                log.exception("uploading %s to S3 failed", step_dir)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued upload is done; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> bool:
        done = self.wait(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return done

    # --- listing, pruning, restore -----------------------------------------------------

    def _listing(self) -> tuple[set[int], set[int]]:
        """(steps with any object, steps with a manifest)."""
        present: set[int] = set()
        complete: set[int] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        base = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                folder, _, name = obj["Key"][len(base) :].partition("/")
                step = contract.parse_step_dir(folder)
                if step is not None:
                    present.add(step)
                    if name == contract.COMMIT_MARKER:
                        complete.add(step)
        return present, complete

    def remote_steps(self) -> list[int]:
        """Steps whose manifest is in the bucket (complete uploads), oldest first."""
        return sorted(self._listing()[1])

    def _remote_metric(self, step: int) -> float | None:
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._key(step, contract.COMMIT_MARKER)
            )["Body"].read()
            metric = json.loads(body).get("metric")
        except Exception:
            return None
        return float(metric) if metric is not None else None

    def delete_step(self, step: int) -> None:
        # The manifest goes first, so a half-deleted step is never taken as complete.
        self.client.delete_object(Bucket=self.bucket, Key=self._key(step, contract.COMMIT_MARKER))
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(step) + "/"):
            for obj in page.get("Contents", []):
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    def prune(self, keep: int, keep_best: bool = True) -> list[int]:
        """Keep the newest ``keep`` complete steps and the best; also drop uploads cut short
        (no manifest) that are older than the newest complete step."""
        present, complete = self._listing()
        steps = sorted(complete)
        protected = set(steps[-keep:])
        if keep_best:
            scored = [(m, s) for s in steps if (m := self._remote_metric(s)) is not None]
            if scored:
                protected.add(min(scored)[1])
        newest = steps[-1] if steps else -1
        doomed = sorted(
            [s for s in steps if s not in protected] + [s for s in present - complete if s < newest]
        )
        for s in doomed:
            self.delete_step(s)
        return doomed

    def restore_latest(self, directory: Path) -> int | None:
        """Download the newest intact mirrored step into ``directory``; its step or None."""
        directory.mkdir(parents=True, exist_ok=True)
        for step in reversed(self.remote_steps()):
            final = directory / contract.step_dir_name(step)
            tmp = directory / f"{TMP_PREFIX}s3-{final.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                self._download(step, tmp)
                reason = verify(tmp, step)
            except Exception as e:
                reason = f"download failed: {e}"
            if reason is not None:
                log.error(
                    "mirrored %s is damaged (%s); trying the previous one", final.name, reason
                )
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(directory)
            log.info("restored %s from s3://%s/%s", final.name, self.bucket, self._key(step))
            return step
        return None

    def _download(self, step: int, dest: Path) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._key(step) + "/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if not name or "/" in name:
                    continue
                path = dest / name
                self.client.download_file(self.bucket, obj["Key"], str(path))
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
