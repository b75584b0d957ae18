"""The trainer process saves within one step of the EC2 spot notice (a local
instance-metadata server), keeps training, and stops with a save on the SIGTERM after."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import fake_imds
from fake_imds import NOTICE, FakeIMDS
from trainer_helpers import Trainer, committed, read_events, single_cmd

from spotrun_api import contract
from spotrun_trainer.checkpoint import verify
from spotrun_trainer.testhooks import ENV_PAUSE_AT_STEP

imds = fake_imds.imds  # the fake instance-metadata server fixture


def test_trainer_saves_within_one_step_of_the_spot_notice(
    launch: Callable[..., Trainer], tmp_path: Path, imds: FakeIMDS
) -> None:
    ckpt = tmp_path / "ckpt"
    at = 3
    t = launch(
        single_cmd(
            ckpt,
            "--model.kind", "contrastive",
            "--max-steps", "100000",
            "--eval-every", "0",
            "--checkpoint.interval-steps", "0",  # no periodic saves: any save is the notice's
            "--preemption.spot-notice",
            "--preemption.spot-notice-endpoint", imds.url,
            "--preemption.spot-notice-interval-seconds", "0.1",
        ),
        "spot",
        {ENV_PAUSE_AT_STEP: str(at)},
    )  # fmt: skip
    t.wait_event("paused", 0, at)
    assert committed(ckpt) == []
    imds.notice = NOTICE
    t.wait_event("committed", 0, at, timeout=60)
    assert verify(ckpt / f"step-{at}", at) is None
    assert committed(ckpt) == [at]
    assert any(tok == imds.token for m, _, tok in imds.requests if m == "GET"), "IMDSv2 used"

    # Training goes on after the notice; the SIGTERM that follows stops it with a save.
    t.proc.send_signal(signal.SIGTERM)
    assert t.wait(60) == contract.EXIT_STOPPED, t.output()[-4000:]
    steps = [s for e, _, s in read_events(t.events) if e == "step"]
    assert committed(ckpt)[-1] == max(steps)
    assert "spot interruption notice" in t.output()
