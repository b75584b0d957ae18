"""``status.progress`` of the run's TrainingRun, patched by rank 0 and rate-limited.

The patch goes out on a background thread with a one-slot mailbox (newest wins), so a
slow or absent API server never stalls training; failures are logged (the first one as a
warning), never raised. The client config comes from the usual order: the in-cluster
service account, else ``KUBECONFIG``, else ``~/.kube/config``.

Each attempt is a new process with a new reporter. A JSON merge patch keeps every key it
does not mention, so the per-attempt fields (``contract.PER_ATTEMPT_PROGRESS_FIELDS``:
samplesPerSecond, attempt) are sent as null until this attempt has its own values; the
first report of an attempt never shows the previous attempt's throughput.

The typed model (``spotrun_api.status``, pydantic: a fifth of a second) is imported when a
reporter is built, so ranks that report nothing never pay for it before their first step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from spotrun_api import contract

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from spotrun_api.status import Progress

log = logging.getLogger(__name__)

PatchFn = Callable[[dict[str, Any]], None]


def patch_body(progress: Progress) -> dict[str, Any]:
    """The merge patch sent to the status subresource (per-attempt fields null until set)."""
    return {"status": {"progress": progress.to_patch()}}


class ProgressReporter:
    """Sends ``status.progress`` at most every ``min_interval`` s, and at once on checkpoints."""

    def __init__(
        self,
        patch: PatchFn,
        *,
        min_interval: float = 10.0,
        attempt: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        from spotrun_api.status import Progress

        self._patch = patch
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._progress = Progress(step=0, attempt=attempt)
        self._last_sent: float | None = None
        self._dirty = False
        self.sent = 0
        self.failures = 0
        self._background = background
        self._mailbox: dict[str, Any] | None = None
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._sender, name="progress", daemon=True)
            self._thread.start()

    @property
    def progress(self) -> Progress:
        return self._progress

    def step(self, step: int, samples_per_second: float | None = None) -> bool:
        """Record training progress; patches when the rate limit allows. True when sent."""
        with self._lock:
            sps = (
                self._progress.samples_per_second
                if samples_per_second is None
                else round(samples_per_second, 3)
            )
            self._progress = replace(self._progress, step=step, samples_per_second=sps)
            return self._maybe_send_locked(force=False)

    def checkpoint(self, step: int, committed_at: str, path: str) -> bool:
        """Record a committed checkpoint; always patches."""
        with self._lock:
            self._progress = replace(
                self._progress,
                step=max(step, self._progress.step),
                checkpoint_step=step,
                checkpoint_time=committed_at,
                checkpoint_path=path,
            )
            return self._maybe_send_locked(force=True)

    def save_stall(self, seconds: float) -> bool:
        """Record how long the newest periodic save blocked the loop (checkpointStallSeconds,
        the operator's C for checkpoint.interval auto); sent with the next patch."""
        with self._lock:
            stall = round(max(0.0, seconds), 3)
            self._progress = replace(self._progress, checkpoint_stall_seconds=stall)
            return self._maybe_send_locked(force=False)

    def restart_phases(self, phases: Mapping[str, float]) -> None:
        """Record this attempt's restart phases (``restartPhases``, phases.py); sent with
        the first step's report, which follows at once (no patch of its own)."""
        from spotrun_api.status import RestartPhases

        with self._lock:
            value = RestartPhases(**phases)
            self._progress = replace(self._progress, restart_phases=value)

    def _maybe_send_locked(self, force: bool) -> bool:
        now = self._clock()
        if not force and self._last_sent is not None and now - self._last_sent < self.min_interval:
            self._dirty = True
            return False
        self._last_sent = now
        self._dirty = False
        body = patch_body(self._progress)
        if self._background:
            self._mailbox = body
            self._wake.notify()
        else:
            self._send(body)
        return True

    def _send(self, body: dict[str, Any]) -> None:
        try:
            self._patch(body)
            self.sent += 1
        except Exception as e:
            self.failures += 1
            if self.failures == 1:
                log.warning("patching status.progress failed (later failures at debug): %s", e)
            else:
                log.debug("patching status.progress failed (%d so far): %s", self.failures, e)

    def _sender(self) -> None:
        while True:
            with self._lock:
                while self._mailbox is None and not self._closed:
                    self._wake.wait()
                body, self._mailbox = self._mailbox, None
                closed = self._closed
            if body is not None:
                self._send(body)
            if closed and body is None:
                return

    def close(self, timeout: float = 20.0) -> None:
        """Send what the rate limit held back, then stop the sender."""
        with self._lock:
            if self._dirty:
                self._maybe_send_locked(force=True)
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)


DEFAULT_KUBECONFIG = "~/.kube/config"


def kube_api_client() -> ApiClient:
    """A client from the standard loading order: the in-cluster service account, else
    ``KUBECONFIG`` (read now: the library reads it once, at import), else ~/.kube/config.
    Raises ``ConfigException`` saying why each failed."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster:
        path = os.environ.get("KUBECONFIG")
        where = f"KUBECONFIG={path}" if path else f"{DEFAULT_KUBECONFIG} (KUBECONFIG unset)"
        try:
            config.load_kube_config(
                config_file=path or DEFAULT_KUBECONFIG, client_configuration=configuration
            )
        except Exception as e:
            raise config.ConfigException(
                f"no in-cluster config ({in_cluster}) and no usable kubeconfig at {where} ({e})"
            ) from e
    return client.ApiClient(configuration)


def kube_patch_fn(name: str, namespace: str, timeout: float = 5.0) -> PatchFn:
    """A merge patch of ``trainingruns/<name>/status`` with ``kube_api_client()``."""
    from kubernetes import client

    api = client.CustomObjectsApi(kube_api_client())

    def patch(body: dict[str, Any]) -> None:
        api.patch_namespaced_custom_object_status(
            contract.GROUP,
            contract.VERSION,
            namespace,
            contract.PLURAL,
            name,
            body,
            _content_type="application/merge-patch+json",
            _request_timeout=timeout,
        )

    return patch


def reporter_from_env(
    env: Mapping[str, str],
    min_interval: float,
    patch_factory: Callable[[str, str], PatchFn] = kube_patch_fn,
    background: bool = True,
) -> ProgressReporter | None:
    """A reporter for this run (SPOTRUN_RUN/NAMESPACE set) whose patches carry ``attempt`` =
    SPOTRUN_ATTEMPT; None, with one warning, when no Kubernetes config can be loaded."""
    name, namespace = env.get(contract.ENV_RUN), env.get(contract.ENV_NAMESPACE)
    if not name or not namespace:
        return None
    try:
        patch = patch_factory(name, namespace)
    except Exception as e:
        log.warning("progress not reported to TrainingRun %s/%s: %s", namespace, name, e)
        return None
    attempt = contract.attempt_from_env(env)
    if attempt is None:
        log.warning(
            "%s is %r, not a positive integer: status.progress.attempt stays empty",
            contract.ENV_ATTEMPT,
            env.get(contract.ENV_ATTEMPT),
        )
    return ProgressReporter(
        patch, min_interval=min_interval, attempt=attempt, background=background
    )
