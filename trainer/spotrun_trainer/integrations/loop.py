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
``step-N`` layout and commit protocol, checksum verification and fallback on load.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from spotrun_api import contract
from spotrun_trainer.checkpoint import CheckpointInfo, CheckpointManager
from spotrun_trainer.integrations.ranks import Ranks
from spotrun_trainer.preemption import SpotNoticePoller, StopGuard
from spotrun_trainer.progress import ProgressReporter, reporter_from_env
from spotrun_trainer.state import ModelState, RNGState, Stateful
from spotrun_trainer.testhooks import TestHooks

log = logging.getLogger(__name__)


def _stateful(part: Any) -> Stateful:
    # A (DDP-wrapped) module is saved unwrapped, so keys never carry "module.".
    return ModelState(part) if isinstance(part, nn.Module) else part


class SpotrunLoop:
    """Checkpoint, stop and progress handling for a loop you own."""

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
        chosen = checkpoint_dir or self.env.get(contract.ENV_CHECKPOINT_DIR) or "./checkpoints"
        raw_interval = self.env.get(contract.ENV_CHECKPOINT_INTERVAL_SECONDS, "").strip()
        self.interval_seconds = (
            interval_seconds if interval_seconds is not None else float(raw_interval or 0)
        )
        self.interval_steps = interval_steps
        self.samples_per_step = samples_per_step
        self.shared = {k: _stateful(v) for k, v in shared.items()}
        self.per_rank: dict[str, Stateful] = dict(per_rank or {"rng": RNGState()})
        self.ranks = Ranks()
        self.hooks = TestHooks(self.env, self.ranks.rank)
        self.reporter = reporter
        if reporter is None and self.ranks.rank == 0:
            self.reporter = reporter_from_env(self.env, 10.0)
        self.manager = CheckpointManager(
            Path(chosen),
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            keep=keep or int(self.env.get(contract.ENV_CHECKPOINT_KEEP) or 3),
            keep_best=False,
            async_save=async_save,
            collectives=self.ranks,
            on_commit=self._on_commit,
            before_commit=self.hooks.before_commit,
        )
        self.guard = StopGuard().install()
        self._poller: SpotNoticePoller | None = None
        if spot_notice and int(self.env.get("LOCAL_RANK", "0")) == 0:
            self._poller = SpotNoticePoller(
                lambda notice: self.guard.request_save(f"spot notice {notice}"),
                endpoint=spot_notice_endpoint,
                interval=spot_notice_interval_seconds,
            ).start()
        self._last_save = time.monotonic()
        self._saved_step: int | None = None
        self._t0: tuple[float, int] | None = None

    def resume(self) -> int:
        """Load the newest committed checkpoint into the parts; the step to go on from."""
        self.manager.prepare()
        info = self.manager.load(self.shared, self.per_rank)
        step = 0 if info is None else info.step
        if info is not None:
            log.info("resumed from %s", info.path)
            if self.reporter is not None:
                self.reporter.checkpoint(info.step, info.committed_at, str(info.path))
        self._last_save = time.monotonic()
        self.hooks.started(step, self.guard)
        return step

    def step_end(self, step: int) -> None:
        """Call after each optimizer step with the number of steps done. Saves when an
        interval is due or a save was requested; on a stop request saves and exits 143."""
        self.hooks.after_step(step, self.guard)
        self._report(step)
        due = (self.interval_steps > 0 and step % self.interval_steps == 0) or (
            0 < self.interval_seconds <= time.monotonic() - self._last_save
        )
        stop, save_now, due = self.ranks.agree(
            [self.guard.stop_requested.is_set(), self.guard.save_requested.is_set(), due]
        )
        if save_now:
            self.guard.take_save_request()
            log.warning("saving at step %d: %s", step, self.guard.save_reason or "peer rank")
        if stop or save_now or due:
            self.save(step)
        if stop:
            self.manager.wait()
            self.ranks.barrier()
            since = time.monotonic() - (self.guard.stop_time or time.monotonic())
            log.warning(
                "stopped (%s): step %d committed %.1fs after the request; exiting %d",
                self.guard.stop_reason or "peer rank",
                step,
                since,
                contract.EXIT_STOPPED,
            )
            self.close()
            raise SystemExit(contract.EXIT_STOPPED)

    def save(self, step: int) -> float:
        """Save now (async when configured); the seconds the loop was blocked."""
        self._last_save = time.monotonic()
        self._saved_step = step
        return self.manager.save(step, self.shared, self.per_rank)

    def finish(self, step: int) -> None:
        """The final checkpoint, waited for; then release signals and the reporter."""
        if self._saved_step != step:
            self.save(step)
        self.manager.wait()
        self.ranks.barrier()
        self.close()

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        if self.reporter is not None:
            self.reporter.close()
        self.guard.uninstall()

    def _on_commit(self, info: CheckpointInfo) -> None:
        self.hooks.announce("committed", info.step)
        if self.reporter is not None:
            self.reporter.checkpoint(info.step, info.committed_at, str(info.path))

    def _report(self, step: int) -> None:
        if self.reporter is None:
            return
        now = time.monotonic()
        if self._t0 is None or self.samples_per_step is None:
            self._t0 = self._t0 or (now, step)
            self.reporter.step(step)
            return
        t0, s0 = self._t0
        sps = (step - s0) * self.samples_per_step / (now - t0) if now > t0 else None
        self.reporter.step(step, sps)
