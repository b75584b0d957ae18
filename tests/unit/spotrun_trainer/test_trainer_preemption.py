"""SIGTERM guard and the EC2 spot-notice poller, against a local instance-metadata server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import fake_imds
import pytest
from fake_imds import NOTICE, FakeIMDS
from trainer_helpers import poll_until

from spotrun_trainer.preemption import SpotNoticePoller, StopGuard

imds = fake_imds.imds  # the fake instance-metadata server fixture


@pytest.mark.parametrize("imdsv2", [True, False])
def test_poll_once_reads_notice_with_or_without_token(imds: FakeIMDS, imdsv2: bool) -> None:
    imds.imdsv2 = imdsv2
    poller = SpotNoticePoller(lambda n: None, endpoint=imds.url, interval=0.05)
    assert poller.poll_once() is None  # 404: no interruption scheduled
    imds.notice = NOTICE
    assert poller.poll_once() == NOTICE
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert all(tok == ("tok-123" if imdsv2 else None) for _, _, tok in gets)
    puts = [r for r in imds.requests if r[0] == "PUT"]
    assert len(puts) == 1, "token fetched once and cached (or IMDSv1 remembered)"


def test_poller_calls_back_once_when_the_notice_appears(imds: FakeIMDS) -> None:
    seen: list[dict[str, Any]] = []
    poller = SpotNoticePoller(seen.append, endpoint=imds.url, interval=0.05).start()
    try:
        poll_until(lambda: len([r for r in imds.requests if r[0] == "GET"]) >= 2, 30, "polls")
        assert seen == []
        imds.notice = NOTICE
        poll_until(lambda: seen == [NOTICE], 30, "the notice callback")
    finally:
        poller.stop()
    assert seen == [NOTICE]


def test_poller_survives_an_unreachable_endpoint() -> None:
    poller = SpotNoticePoller(lambda n: None, endpoint="http://127.0.0.1:9", interval=0.05,
                              timeout=0.5)  # fmt: skip
    with pytest.raises(OSError):
        poller.poll_once()
    poller.start()
    poller.stop()


def test_stop_guard_turns_sigterm_into_a_flag() -> None:
    before = signal.getsignal(signal.SIGTERM)
    guard = StopGuard().install()
    try:
        assert not guard.wait_for_request(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        poll_until(guard.stop_requested.is_set, 10, "the SIGTERM flag")
        assert guard.stop_reason == "SIGTERM" and guard.stop_time is not None
        assert guard.wait_for_request(0.01)
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


# The main thread holds the lock of the guard's own wake event (as inside Event.wait or
# Event.clear, which the paused or sleeping trainer runs all the time) when SIGTERM lands:
# the handler runs right there, in that thread. A handler that set the event itself
# waited forever for that lock (a trainer seen hanging in CI after a SIGTERM).
_SIGTERM_WHILE_THE_WAKE_LOCK_IS_HELD = textwrap.dedent("""
    import os, signal
    from spotrun_trainer.preemption import StopGuard
    guard = StopGuard().install()
    with guard._wake._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes: the handler runs among them
            pass
    print(guard.wait_for_request(30), guard.stop_reason)
""")


def test_sigterm_landing_while_the_main_thread_holds_a_guard_lock_still_stops() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run([sys.executable, "-c", _SIGTERM_WHILE_THE_WAKE_LOCK_IS_HELD],
                              env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
    except subprocess.TimeoutExpired:  # run() has SIGKILLed it
        pytest.fail("the SIGTERM handler deadlocked on a lock its own thread held")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "SIGTERM"]


def test_save_requests_are_consumed_once() -> None:
    guard = StopGuard()
    guard.request_save("spot notice")
    assert guard.take_save_request() and not guard.take_save_request()
    assert not guard.stop_requested.is_set()
