"""Stop requests: SIGTERM/SIGINT, and the EC2 spot interruption notice.

The guard only raises flags; the training loop reads them at step boundaries, where all
ranks agree on them (all_reduce MAX) so every rank saves the same step. One flag is read
at once, not at a boundary: ``hurry`` (``pacing.Hurry``), which a stop or a save request
(the spot notice: the node is going) raises, so a paced checkpoint write already in
flight drops its pace without waiting for the step to end.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from spotrun_trainer.pacing import Hurry

log = logging.getLogger(__name__)

SPOT_ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_SECONDS = 21600


class StopGuard:
    """Turns stop signals into flags the loop polls; never interrupts a step."""

    def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._previous: dict[signal.Signals, Any] = {}
        self.stop_requested = threading.Event()
        self.save_requested = threading.Event()
        self.hurry = Hurry()  # the node is going: checkpoint writes in flight drop their pace
        self._wake = threading.Event()
        self.stop_time: float | None = None
        self.stop_reason: str | None = None
        self.save_reason: str | None = None
        # Signals caught, as (signal, monotonic time), for the dispatch thread; None ends it.
        self._caught: queue.SimpleQueue[tuple[signal.Signals, float] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None

    def install(self) -> StopGuard:
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(
                target=self._dispatch, name="stop-signals", daemon=True
            )
            self._dispatcher.start()
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._dispatcher is not None:
            self._caught.put(None)
            self._dispatcher.join()
            self._dispatcher = None
        self.hurry.close()  # every save has been waited for by now

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # A Python signal handler runs in the main thread between two bytecodes, possibly
        # while that thread holds a threading lock (inside Event.wait or Event.clear of
        # the very events below). Taking such a lock here would deadlock, so the handler
        # only hands the signal to the dispatch thread: SimpleQueue.put is reentrant.
        self._caught.put((signal.Signals(signum), time.monotonic()))

    def _dispatch(self) -> None:
        while (caught := self._caught.get()) is not None:
            sig, at = caught
            self.request_stop(sig.name, at)

    def request_stop(self, reason: str, at: float | None = None) -> None:
        """Raise the stop flag; ``at`` is when it was asked for (monotonic; default now)."""
        if not self.stop_requested.is_set():
            self.stop_time = time.monotonic() if at is None else at
            self.stop_reason = reason
        self.stop_requested.set()
        self.hurry.set()
        self._wake.set()

    def request_save(self, reason: str) -> None:
        self.save_reason = reason
        self.save_requested.set()
        self.hurry.set()  # the spot notice: the node is going
        self._wake.set()

    def take_save_request(self) -> bool:
        """True once per request: the loop consumes it when it saves."""
        if self.save_requested.is_set():
            self.save_requested.clear()
            return True
        return False

    def seconds_left(self, grace: float, now: float | None = None) -> float | None:
        """Seconds of the ``grace`` period left since the first stop request (negative once
        past it); None when no stop was requested."""
        if self.stop_time is None:
            return None
        return grace - ((time.monotonic() if now is None else now) - self.stop_time)

    def wait_for_request(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until a stop or save request arrives."""
        if self.stop_requested.is_set() or self.save_requested.is_set():
            return True
        self._wake.wait(timeout)
        self._wake.clear()
        return self.stop_requested.is_set() or self.save_requested.is_set()


class SpotNoticePoller:
    """Polls the instance-metadata spot notice; calls ``on_notice`` once when it appears.

    IMDSv2 first (token from ``PUT /latest/api/token``), IMDSv1 when no token is offered.
    404 on the instance-action path means no interruption is scheduled.
    """

    def __init__(
        self,
        on_notice: Callable[[dict[str, Any]], None],
        endpoint: str = "http://169.254.169.254",
        interval: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self.on_notice = on_notice
        self.endpoint = endpoint.rstrip("/")
        self.interval = interval
        self.timeout = timeout
        self._token: str | None = None
        self._token_expiry = 0.0
        self._imdsv1 = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.notice: dict[str, Any] | None = None

    def _fetch_token(self) -> str | None:
        if self._imdsv1:
            return None
        if self._token and time.monotonic() < self._token_expiry:
            return self._token
        req = urllib.request.Request(
            self.endpoint + TOKEN_PATH,
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                self._token = resp.read().decode().strip()
        except urllib.error.HTTPError as e:
            if e.code in (403, 404, 405):  # endpoint without IMDSv2
                self._imdsv1 = True
            return None
        self._token_expiry = time.monotonic() + TOKEN_TTL_SECONDS - 60
        return self._token

    def poll_once(self) -> dict[str, Any] | None:
        """The notice (parsed JSON) when one is posted, else None; raises on network errors."""
        headers = {}
        token = self._fetch_token()
        if token:
            headers["X-aws-ec2-metadata-token"] = token
        req = urllib.request.Request(self.endpoint + SPOT_ACTION_PATH, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as e:
            if e.code == 401:  # token expired or revoked
                self._token = None
            if e.code in (401, 404):
                return None
            raise
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        return parsed if isinstance(parsed, dict) else {"raw": body}

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                notice = self.poll_once()
                failures = 0
            except (OSError, urllib.error.URLError) as e:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("spot notice poll failed (%d in a row): %s", failures, e)
                notice = None
            if notice is not None:
                self.notice = notice
                log.warning("spot interruption notice: %s", notice)
                try:
                    self.on_notice(notice)
                finally:
                    self._stop.set()
                return
            self._stop.wait(self.interval)

    def start(self) -> SpotNoticePoller:
        self._thread = threading.Thread(target=self._run, name="spot-notice", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
