"""Polling with a deadline, and the error a local-cluster step raises when it gives up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("spotrun_dev")

# A wait longer than this is logged (where a test's or a command's time goes).
SLOW_WAIT_SECONDS = 2.0


class ClusterError(RuntimeError):
    """The local cluster could not be brought up; the message says which part failed."""


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    """Poll ``check`` until it is true; raise ClusterError naming ``what`` at the deadline."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            if check():
                if time.monotonic() - started > SLOW_WAIT_SECONDS:
                    log.info("%s: waited %.1fs", what, time.monotonic() - started)
                return
        except Exception as exc:
            log.debug("%s not ready: %s", what, exc)
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
