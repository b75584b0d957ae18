"""The headline property: stop or kill a run at a random step, resume it, and end bitwise
equal to a run that was never interrupted. Real processes, real signals."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from trainer_helpers import (
    EVERY,
    MAX_STEPS,
    Trainer,
    assert_bitwise_equal,
    committed,
    folder_digest,
    interruption_seed,
    launcher_cmd,
    load_checkpoint,
    poll_until,
    read_events,
    single_cmd,
    torchrun_cmd,
)

from spotrun_api import contract
from spotrun_trainer.checkpoint import verify
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP, ENV_PAUSE_BEFORE_COMMIT

STOP_DEADLINE = 60.0  # well inside the 110 s grace period of the design


def _pick_step(label: str) -> int:
    seed = interruption_seed()
    step = random.Random(f"{seed}-{label}").randint(1, MAX_STEPS - 1)
    print(f"{label}: interrupting after step {step}")
    return step


def _assert_all_dead(t: Trainer) -> None:
    pids = [pid for e, _, pid in read_events(t.events) if e == "pid"]

    def gone() -> bool:
        return all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in pids)

    poll_until(gone, STOP_DEADLINE, f"workers {pids} to die")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _assert_resumed_at(run: Trainer, step: int) -> None:
    starts = [s for e, r, s in read_events(run.events) if e == "started" and r == 0]
    assert starts == [step], f"resumed at {starts}, expected [{step}]\n{run.output()[-3000:]}"


def _interrupt(t: Trainer, sig: str, ranks: int, step: int, ckpt: Path, to_group: bool) -> int:
    """Deliver ``sig`` while every rank holds after ``step``; the step training resumes at."""
    for r in range(ranks):
        t.wait_event("paused", r, step)
    if sig == "SIGTERM":
        sent = time.monotonic()
        t.proc.send_signal(signal.SIGTERM)  # only the top process, as the kubelet does
        rc = t.wait(STOP_DEADLINE)
        assert rc == contract.EXIT_STOPPED, t.output()[-4000:]
        assert time.monotonic() - sent < STOP_DEADLINE
        assert committed(ckpt)[-1] == step, "the stop must save the step it finished"
        assert verify(ckpt / f"step-{step}", step) is None
    else:
        if to_group:  # the node is gone: launcher and every worker at once
            t.kill_tree()
        else:
            t.proc.send_signal(signal.SIGKILL)
        assert t.wait(STOP_DEADLINE) == -signal.SIGKILL
        _assert_all_dead(t)
    steps_done = [s for e, _, s in read_events(t.events) if e == "step"]
    assert max(steps_done) == step, "no rank may start a step after the interruption"
    return committed(ckpt)[-1] if committed(ckpt) else 0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_single_process_resume_is_bitwise_equal(
    sig: str, launch: Callable[..., Trainer], tmp_path: Path, reference_single: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    step = _pick_step(f"single-{sig}")
    # Async saves under SIGKILL: a kill may land while a write is in flight.
    extra = ["--checkpoint.async-save"] if sig == "SIGKILL" else []
    t = launch(single_cmd(ckpt, *extra), "interrupted", {ENV_PAUSE_AT_STEP: str(step)})
    resume_at = _interrupt(t, sig, 1, step, ckpt, to_group=False)
    assert resume_at <= step

    r = launch(single_cmd(ckpt), "resumed")
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, resume_at)
    assert_bitwise_equal(load_checkpoint(reference_single, MAX_STEPS),
                         load_checkpoint(ckpt, MAX_STEPS))  # fmt: skip


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_ddp_two_process_resume_is_bitwise_equal(
    sig: str, launch: Callable[..., Trainer], tmp_path: Path, reference_ddp: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    step = _pick_step(f"ddp-{sig}")
    # SIGTERM goes to the launcher (PID 1 of a pod), which must turn it into exit 143;
    # SIGKILL takes down torchrun and both workers at once, like a vanished node.
    cmd = (launcher_cmd if sig == "SIGTERM" else torchrun_cmd)(ckpt, "--checkpoint.async-save")
    t = launch(cmd, "interrupted", {ENV_PAUSE_AT_STEP: str(step)})
    resume_at = _interrupt(t, sig, 2, step, ckpt, to_group=True)
    if sig == "SIGTERM":
        assert {"rank-0.pt", "rank-1.pt", "shared.pt"} <= set(folder_digest(ckpt / f"step-{step}"))

    r = launch(torchrun_cmd(ckpt, "--checkpoint.async-save"), "resumed")
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, resume_at)
    assert_bitwise_equal(load_checkpoint(reference_ddp, MAX_STEPS),
                         load_checkpoint(ckpt, MAX_STEPS))  # fmt: skip


def test_sigkill_during_save_never_damages_older_checkpoints(
    launch: Callable[..., Trainer], tmp_path: Path, reference_single: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    saving = 2 * EVERY
    t = launch(single_cmd(ckpt), "killed", {ENV_PAUSE_BEFORE_COMMIT: str(saving)})
    t.wait_event("paused-commit", 0, saving)
    older = {s: folder_digest(ckpt / f"step-{s}") for s in committed(ckpt)}
    assert older and max(older) < saving
    tmp = ckpt / f".tmp-step-{saving}"
    assert (tmp / "shared.pt").is_file(), "the data files are written before the commit"
    assert not (ckpt / f"step-{saving}").exists()
    t.kill_tree()
    t.wait(STOP_DEADLINE)

    assert not (ckpt / f"step-{saving}").exists()
    for s, digest in older.items():
        assert folder_digest(ckpt / f"step-{s}") == digest
        assert verify(ckpt / f"step-{s}", s) is None

    r = launch(single_cmd(ckpt), "resumed")
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, max(older))
    assert not tmp.exists(), "the half-written folder is cleaned up, never loaded"
    assert_bitwise_equal(load_checkpoint(reference_single, MAX_STEPS),
                         load_checkpoint(ckpt, MAX_STEPS))  # fmt: skip


def test_truncated_newest_checkpoint_falls_back_to_previous(
    launch: Callable[..., Trainer], tmp_path: Path, reference_single: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    stop_at = MAX_STEPS - 2
    t = launch(single_cmd(ckpt), "stopped", {ENV_PAUSE_AT_STEP: str(stop_at)})
    assert _interrupt(t, "SIGTERM", 1, stop_at, ckpt, to_group=False) == stop_at
    previous = committed(ckpt)[-2]
    shared = ckpt / f"step-{stop_at}" / "shared.pt"
    with open(shared, "r+b") as f:
        f.truncate(shared.stat().st_size // 2)

    r = launch(single_cmd(ckpt), "resumed")
    assert r.wait() == contract.EXIT_DONE, r.output()[-4000:]
    _assert_resumed_at(r, previous)
    out = r.output()
    assert f"step-{stop_at} is damaged" in out and "falling back to the previous one" in out
    assert_bitwise_equal(load_checkpoint(reference_single, MAX_STEPS),
                         load_checkpoint(ckpt, MAX_STEPS))  # fmt: skip


def test_sigterm_before_the_first_step_still_leaves_a_checkpoint(
    launch: Callable[..., Trainer], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    t = launch(single_cmd(ckpt, kind="contrastive"), "early", {ENV_PAUSE_AT_STEP: "0"})
    t.wait_event("paused", 0, 0)
    t.proc.send_signal(signal.SIGTERM)
    assert t.wait(STOP_DEADLINE) == contract.EXIT_STOPPED, t.output()[-4000:]
    assert committed(ckpt) == [0], "exit 143 promises a committed checkpoint"
    assert not [e for e in read_events(t.events) if e[0] == "step"]


def test_time_interval_saves_at_agreed_step_boundaries(
    launch: Callable[..., Trainer], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    cmd = single_cmd(ckpt, "--max-steps", "4", "--checkpoint.interval-steps", "0",
                     "--checkpoint.interval-seconds", "0.000001", "--checkpoint.keep", "10",
                     kind="contrastive")  # fmt: skip
    t = launch(cmd, "interval")
    assert t.wait() == contract.EXIT_DONE, t.output()[-4000:]
    assert committed(ckpt) == [0, 1, 2, 3, 4], "an interval this short is due at every boundary"
