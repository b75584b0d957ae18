"""Test-only fault injection (crash in one attempt, slow saves) and the grace deadline."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn
from trainer_helpers import (
    MAX_STEPS,
    Trainer,
    assert_bitwise_equal,
    committed,
    load_checkpoint,
    poll_until,
    read_events,
    single_cmd,
)

from spotrun_api import contract
from spotrun_lm.config import TrainConfig
from spotrun_lm.faults import FaultConfig, FaultInjector, InjectedCrash
from spotrun_lm.train import _upload_wait, _warn_if_past_grace
from spotrun_trainer.checkpoint import (
    CheckpointHooks,
    CheckpointInfo,
    CheckpointManager,
    CheckpointSettings,
    verify,
)
from spotrun_trainer.preemption import StopGuard
from spotrun_trainer.state import ModelState, RNGState
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP

CRASH = FaultConfig(crash_at_step=6, crash_in_attempt=2)


@pytest.mark.parametrize(
    ("cfg", "attempt", "rank", "step", "fires"),
    [
        (CRASH, "2", 0, 6, True),
        (CRASH, "2", 1, 6, True),  # crash_rank -1: every rank at the same boundary
        (CRASH, "2", 0, 5, False),
        (CRASH, "2", 0, 7, False),
        (CRASH, "1", 0, 6, False),  # another attempt
        (CRASH, "3", 0, 6, False),
        (FaultConfig(crash_at_step=6), None, 0, 6, True),  # no SPOTRUN_ATTEMPT: attempt 1
        (FaultConfig(crash_at_step=6, crash_in_attempt=0), "7", 0, 6, True),  # every attempt
        (FaultConfig(crash_at_step=6, crash_rank=1), "1", 0, 6, False),
        (FaultConfig(crash_at_step=6, crash_rank=1), "1", 1, 6, True),
        (FaultConfig(crash_at_step=0), "1", 0, 0, True),
        (FaultConfig(), "1", 0, 0, False),  # off by default
    ],
)
def test_crash_fires_at_its_step_attempt_and_rank_only(
    cfg: FaultConfig, attempt: str | None, rank: int, step: int, fires: bool
) -> None:
    env = {contract.ENV_ATTEMPT: attempt} if attempt is not None else {}
    order: list[str] = []
    injector = FaultInjector(cfg, rank, env)
    if not fires:
        injector.at_boundary(step, settle=lambda: order.append("settle"))
        assert order == []
        return
    with pytest.raises(InjectedCrash, match=f"injected crash at step {step}"):
        injector.at_boundary(step, settle=lambda: order.append("settle"))
    assert order == ["settle"], "the save in flight is finished before the crash"


def test_slow_save_holds_the_marker_after_the_files(tmp_path: Path) -> None:
    hold = 0.6
    injector = FaultInjector(FaultConfig(slow_save_seconds=hold), 0, {})
    shared = {"model": ModelState(nn.Linear(4, 2))}
    per_rank = {"rng": RNGState()}
    m = CheckpointManager(
        tmp_path,
        CheckpointSettings(async_save=True),
        hooks=CheckpointHooks(after_write=injector.slow_save),
    )
    m.prepare()
    start = time.monotonic()
    m.save(3, shared, per_rank)
    tmp = tmp_path / ".tmp-step-3"
    poll_until(lambda: (tmp / "rank-0.pt").is_file(), 30, "the save's files")
    assert (tmp / "shared.pt").is_file() and not (tmp / "part-0.json").exists()
    assert not (tmp / contract.COMMIT_MARKER).exists() and m.in_flight
    info = m.wait()
    assert info is not None and time.monotonic() - start >= hold
    final = tmp_path / "step-3"
    assert verify(final, 3) is None
    gap = (final / contract.COMMIT_MARKER).stat().st_mtime - (final / "shared.pt").stat().st_mtime
    assert gap >= hold * 0.9, f"marker only {gap:.3f}s after the shard"


def test_no_delays_by_default() -> None:
    slept: list[float] = []
    off = FaultInjector(FaultConfig(), 0, {}, sleep=slept.append)
    off.slow_save(1)
    off.after_step()
    assert slept == []
    on = FaultInjector(FaultConfig(slow_save_seconds=2.5, step_delay_seconds=0.1), 1, {},
                       sleep=slept.append)  # fmt: skip
    on.slow_save(1)
    on.after_step()
    assert slept == [2.5, 0.1]


def test_stop_bounds_the_upload_wait_by_the_grace_left() -> None:
    cfg = TrainConfig()
    cfg.preemption.grace_period_seconds = 20.0
    cfg.checkpoint.s3_upload_timeout_seconds = 60.0
    guard = StopGuard()
    assert guard.seconds_left(20.0) is None
    assert _upload_wait(cfg, guard, stopped=False) == 60.0
    guard.request_stop("SIGTERM")
    assert guard.stop_time is not None
    assert guard.seconds_left(20.0, now=guard.stop_time + 5.0) == 15.0
    guard.stop_time -= 5.0  # the stop came 5 s ago: 15 s left, 2 s kept for the exit
    assert 12.0 < _upload_wait(cfg, guard, stopped=True) <= 13.0
    guard.stop_time -= 30.0
    assert _upload_wait(cfg, guard, stopped=True) == 0.0
    cfg.preemption.grace_period_seconds = 600.0
    assert _upload_wait(cfg, guard, stopped=True) == 60.0  # the upload timeout still caps it


def test_a_save_slower_than_the_grace_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    def info(seconds: float) -> CheckpointInfo:
        return CheckpointInfo(step=4, path=Path("/c/step-4"), committed_at="", bytes=1,
                              seconds=seconds)  # fmt: skip

    caplog.set_level(logging.WARNING)
    assert not _warn_if_past_grace(info(5.0), 10.0, warned=False)
    assert _warn_if_past_grace(info(12.0), 10.0, warned=False)
    assert _warn_if_past_grace(info(12.0), 10.0, warned=True)
    assert caplog.text.count("longer than the 10s grace period") == 1


def test_crash_in_one_attempt_then_the_next_resumes_bitwise_equal(
    launch: Callable[..., Trainer], tmp_path: Path, reference_single: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    crash = ["--fault.crash-at-step", "6", "--fault.crash-in-attempt", "1"]
    # Async saves: the save of step 4 may still be in flight when the crash comes.
    t = launch(single_cmd(ckpt, *crash, "--checkpoint.async-save"), "attempt1",
               {contract.ENV_ATTEMPT: "1"})  # fmt: skip
    assert t.wait() == 1, t.output()[-4000:]
    out = t.output()
    assert "Traceback (most recent call last)" in out
    assert "InjectedCrash: injected crash at step 6 in attempt 1" in out
    assert max(s for e, _, s in read_events(t.events) if e == "step") == 6
    assert committed(ckpt) == [4], "step 6 (and its evaluation's save) is never checkpointed"

    r = launch(single_cmd(ckpt, *crash), "attempt2", {contract.ENV_ATTEMPT: "2"})
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    assert [s for e, rk, s in read_events(r.events) if e == "started" and rk == 0] == [4]
    assert "injected crash" not in r.output()
    assert_bitwise_equal(load_checkpoint(reference_single, MAX_STEPS),
                         load_checkpoint(ckpt, MAX_STEPS))  # fmt: skip


def test_slow_save_keeps_the_stopping_gang_writing(
    launch: Callable[..., Trainer], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    at, hold = 2, 4.0
    cmd = single_cmd(ckpt, "--checkpoint.interval-steps", "0", "--eval-every", "0",
                     "--fault.slow-save-seconds", str(hold), kind="contrastive")  # fmt: skip
    env = {ENV_PAUSE_AT_STEP: str(at), contract.ENV_TERMINATION_GRACE_SECONDS: "30"}
    t = launch(cmd, "slow", env)
    t.wait_event("paused", 0, at)
    assert committed(ckpt) == []
    sent = time.monotonic()
    t.proc.send_signal(signal.SIGTERM)
    tmp = ckpt / f".tmp-step-{at}"
    poll_until(lambda: (tmp / "shared.pt").is_file(), 60, "the stop save's files", alive=t)
    assert not (tmp / contract.COMMIT_MARKER).exists() and not (ckpt / f"step-{at}").exists()
    assert t.proc.poll() is None, "the rank is still inside its save"
    assert t.wait(60) == contract.EXIT_STOPPED, t.output()[-4000:]
    assert time.monotonic() - sent >= hold
    assert committed(ckpt) == [at]
    assert "(grace 30s)" in t.output(), "the grace period comes from the operator's env"
