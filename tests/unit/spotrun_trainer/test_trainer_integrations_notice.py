"""The EC2 spot notice in the integrations: a real poller against a local HTTP server that
plays the instance-metadata service (IMDSv2). The notice requests a save at the next step
boundary; training goes on (the SIGTERM that follows is what stops it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fake_imds
import torch
from fake_imds import FakeIMDS
from trainer_helpers import committed, poll_until, tiny_hf_trainer

from spotrun_trainer.integrations.loop import SpotrunLoop

imds = fake_imds.imds  # the fake instance-metadata server fixture


def test_plain_loop_saves_at_the_step_after_the_spot_notice(tmp_path: Path, imds: FakeIMDS) -> None:
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    spot = SpotrunLoop(tmp_path / "ck", shared={"model": model, "optimizer": opt},
                       spot_notice=True, spot_notice_endpoint=imds.url,
                       spot_notice_interval_seconds=0.05, env={})  # fmt: skip
    try:
        assert spot.resume() == 0
        spot.step_end(1)
        assert committed(tmp_path / "ck") == []
        imds.notice = fake_imds.NOTICE
        poll_until(spot.guard.save_requested.is_set, 30, "the poller to see the notice")
        spot.step_end(2)  # saves; no exit
        assert committed(tmp_path / "ck") == [2]
        spot.step_end(3)  # the request was consumed by that save
        assert committed(tmp_path / "ck") == [2]
        spot.finish(3)
        assert committed(tmp_path / "ck") == [2, 3]
        assert any(tok == imds.token for m, _, tok in imds.requests if m == "GET"), "IMDSv2"
    finally:
        spot.close()


def test_hf_callback_saves_at_the_step_after_the_spot_notice(
    tmp_path: Path, imds: FakeIMDS
) -> None:
    from transformers import TrainerCallback

    from spotrun_trainer.integrations.hf import SpotrunCallback

    spot = SpotrunCallback(tmp_path / "ck", spot_notice=True, spot_notice_endpoint=imds.url,
                           spot_notice_interval_seconds=0.05, env={})  # fmt: skip

    class NoticeAt2(TrainerCallback):  # runs before spot's on_step_end
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.global_step == 2:
                imds.notice = fake_imds.NOTICE
                poll_until(spot.guard.save_requested.is_set, 30, "the notice")

    trainer, _ = tiny_hf_trainer(tmp_path, 5, [NoticeAt2(), spot])
    assert trainer.train(resume_from_checkpoint=spot.resume_path()).global_step == 5
    assert committed(tmp_path / "ck") == [2, 5]  # the notice's save, then the final one
