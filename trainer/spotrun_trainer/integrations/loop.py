"""A plain (nanoGPT-style) training loop: the few lines a script adds.

::

    spot = SpotrunLoop(shared={"model": model, "optimizer": opt, "scheduler": sched},
                       interval_steps=100)
    start = spot.resume()                     # 0, or the step of the newest checkpoint
    for step in range(start, max_steps):
        ...                                   # forward, backward, opt.step(), sched.step()
        spot.step_end(step + 1)               # saves when due; SIGTERM: save, exit 143
    spot.finish(max_steps)                    # final checkpoint

``shared`` parts are identical on every rank (model, optimizer, scheduler, your own
counters: anything with ``state_dict``/``load_state_dict``); ``per_rank`` defaults to
every RNG of the process (python, numpy, torch, CUDA), which is also the data position
of a loop that samples its batches from the torch RNG, as nanoGPT's ``get_batch`` does.
Checkpoints go through :class:`spotrun_trainer.checkpoint.CheckpointManager`: spotrun's
``step-N`` layout and commit protocol, checksum verification and fallback on load, and in
a TrainingRun the fence (an attempt that a newer one has fenced leaves with
``contract.EXIT_FENCED``, a ``SystemExit`` out of ``resume``, ``step_end`` or ``finish``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from spotrun_trainer.checkpoint import CheckpointHooks, CheckpointManager
from spotrun_trainer.core import (
    TrainerCore,
    checkpoint_settings,
    integration_config,
    spot_notice_args,
)
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.progress import ProgressReporter
from spotrun_trainer.state import ModelState, RNGState, Stateful

log = logging.getLogger(__name__)


def _stateful(part: Any) -> Stateful:
    # A (DDP-wrapped) module is saved unwrapped, so keys never carry "module.".
    return ModelState(part) if isinstance(part, nn.Module) else part


class SpotrunLoop:
    """Checkpoint, stop and progress handling for a loop you own (an adapter over
    :class:`spotrun_trainer.core.TrainerCore`)."""

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        *,
        shared: Mapping[str, Any],
        per_rank: Mapping[str, Stateful] | None = None,
        interval_steps: int = 0,
        interval_seconds: float | None = None,
        keep: int | None = None,
        async_save: bool = False,
        samples_per_step: int | None = None,
        reporter: ProgressReporter | None = None,
        spot_notice: bool = False,
        spot_notice_endpoint: str = "http://169.254.169.254",
        spot_notice_interval_seconds: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        given = {
            "checkpoint.interval_steps": interval_steps,
            "checkpoint.interval_seconds": interval_seconds,
            "checkpoint.keep": keep or None,
            "checkpoint.async_save": async_save,
            **spot_notice_args(spot_notice, spot_notice_endpoint, spot_notice_interval_seconds),
        }
        cfg = integration_config(self.env, checkpoint_dir, given)
        self.samples_per_step = samples_per_step
        self.shared = {k: _stateful(v) for k, v in shared.items()}
        self.per_rank: dict[str, Stateful] = dict(per_rank or {"rng": RNGState()})
        self.core = TrainerCore(
            cfg, DistContext.of_framework(self.env), self.env, reporter=reporter
        )
        self.manager = CheckpointManager(
            Path(cfg.checkpoint.dir),
            checkpoint_settings(cfg.checkpoint, keep_best=False, env=self.env),
            place=self.core.place(),
            hooks=CheckpointHooks(
                on_commit=self.core.committed, before_commit=self.core.hooks.before_commit
            ),
        )
        self.guard = self.core.guard.install()
        self.core.start_notice_poller()
        self._start = 0

    @property
    def reporter(self) -> ProgressReporter | None:
        return self.core.reporter

    def resume(self) -> int:
        """Load the newest committed checkpoint into the parts; the step to go on from."""
        self.manager.prepare()
        info = self.manager.load(self.shared, self.per_rank)
        step = 0 if info is None else info.step
        if info is not None:
            log.info("resumed from %s", info.path)
            self.core.report_checkpoint(info.step, info.committed_at, str(info.path))
        self._start = step
        self.core.started(step)
        return step

    def step_end(self, step: int) -> None:
        """Call after each optimizer step with the number of steps done. Saves when an
        interval is due or a save was requested; on a stop request saves and exits 143."""
        core = self.core
        core.hooks.after_step(step, self.guard)
        core.report_step(step, core.step_rate(step, self.samples_per_step))
        b = core.agree(step, core.due(step, self._start))
        if b.stop or b.notice or b.due:
            self.save(step)
        if b.stop:
            self.manager.wait()
            self.core.ctx.barrier()
            core.exit_stopped(step)

    def save(self, step: int) -> float:
        """Save now (async when configured); the seconds the loop was blocked."""
        self.core.saved(step)
        return self.manager.save(step, self.shared, self.per_rank)

    def finish(self, step: int) -> None:
        """The final checkpoint, waited for; then release signals and the reporter."""
        if self.core.last_saved != step:
            self.save(step)
        self.manager.wait()
        self.core.ctx.barrier()
        self.close()

    def close(self) -> None:
        self.core.close()
