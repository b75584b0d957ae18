"""A rank's process group teardown is bounded: a checkpoint committed and an exit code
decided must not turn into the kubelet's SIGKILL (137) because the teardown blocks (rank 0,
which hosts the TCPStore, may have exited first)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
import torch.distributed as dist

from spotrun_trainer import distributed
from spotrun_trainer.distributed import DistContext


def test_a_blocked_teardown_is_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: release.wait(30))
    monkeypatch.setattr(distributed, "TEARDOWN_BLOCKED", threading.Event())
    ctx = DistContext(0, 2, 0, torch.device("cpu"), "gloo")
    started = time.monotonic()
    assert distributed.shutdown(ctx, timeout=0.2) is False
    assert time.monotonic() - started < 10  # bounded, not the 30 s the teardown wants
    assert distributed.TEARDOWN_BLOCKED.is_set()
    release.set()


def test_a_finished_teardown_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(1))
    monkeypatch.setattr(distributed, "TEARDOWN_BLOCKED", threading.Event())
    assert distributed.shutdown(DistContext(0, 2, 0, torch.device("cpu"), "gloo"), timeout=5)
    assert calls == [1] and not distributed.TEARDOWN_BLOCKED.is_set()


def test_the_process_exits_with_its_code_past_a_blocked_thread() -> None:
    """A thread that never ends (non-daemon: finalization would join it) does not keep the
    process from exiting 143 once the teardown was left behind."""
    script = textwrap.dedent(
        """
        import threading
        from spotrun_trainer import distributed
        from spotrun_lm.__main__ import exit_code_now
        threading.Thread(target=threading.Event().wait).start()
        distributed.TEARDOWN_BLOCKED.set()
        exit_code_now(143)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert done.returncode == 143, done.stderr.decode()[-2000:]
