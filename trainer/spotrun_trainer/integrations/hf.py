"""Hugging Face ``Trainer`` integration: one ``TrainerCallback``.

::

    spot = SpotrunCallback()                      # SPOTRUN_CHECKPOINT_DIR etc. from the env
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[spot])
    trainer.train(resume_from_checkpoint=spot.resume_path())

What it does:

- SIGTERM/SIGINT (and, with ``spot_notice=True``, the EC2 spot notice) only raise flags;
  at the next step boundary (``on_step_end``) every rank agrees on them and the callback
  asks the Trainer to save; a stop also ends training. Saves are also requested every
  ``interval_seconds`` (``SPOTRUN_CHECKPOINT_INTERVAL_SECONDS``) and at the last step.
- Every save the Trainer makes (``checkpoint-N`` under ``args.output_dir``, its own format:
  weights, optimizer, scheduler, RNG of every rank, ``trainer_state.json``) is committed
  into spotrun's layout by :func:`spotrun_trainer.commit.commit_folder` in ``on_save``:
  ``step-N`` with the ``COMMITTED`` manifest. Then rank 0 calls each ``after_commit(step)``
  (files that only older checkpoints named can go now). After the save a stop exits the
  process with 143 (``contract.EXIT_STOPPED``).
- :meth:`SpotrunCallback.resume_path` is the newest committed, checksum-verified folder:
  the Trainer restores model, optimizer, scheduler, RNG, step and data position from it.
  A folder without the marker is never resumed from.
- ``status.progress`` through :class:`spotrun_trainer.progress.ProgressReporter` on the
  main process (from the env in a cluster, none outside one, or the one passed in).
- The boundary protocol (agreement, stop, exit 143, progress) is
  :class:`spotrun_trainer.core.TrainerCore`'s; this callback adapts it to the Trainer.
- In a TrainingRun (``SPOTRUN_ATTEMPT`` set) checkpoints are fenced (fencing.py):
  :meth:`SpotrunCallback.resume_path` moves the fence before it picks a checkpoint, and
  when a newer attempt has fenced this one every rank leaves with
  ``contract.EXIT_FENCED`` (a ``SystemExit``), at start-up or at a save.

``checkpoint-*`` folders under ``args.output_dir`` are staging: a leftover of a killed
save is removed at the next start. ``load_best_model_at_end`` is not supported (the
Trainer's best-checkpoint path moves away).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from spotrun_api import contract
from spotrun_trainer import commit, fencing
from spotrun_trainer.checkpoint_io import read_marker
from spotrun_trainer.core import TrainerCore, integration_config, spot_notice_args
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.fencing import CheckpointFenced
from spotrun_trainer.preemption import StopGuard
from spotrun_trainer.progress import ProgressReporter

log = logging.getLogger(__name__)

HF_CHECKPOINT_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class SpotrunCallback(TrainerCallback):
    """spotrun's checkpoint, stop and progress handling for a Hugging Face ``Trainer`` (an
    adapter over :class:`spotrun_trainer.core.TrainerCore`, built at ``on_train_begin``
    once the Trainer's process group exists)."""

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        *,
        keep: int | None = None,
        interval_seconds: float | None = None,
        grace_period_seconds: float | None = None,
        reporter: ProgressReporter | None = None,
        progress_interval_seconds: float = 10.0,
        spot_notice: bool = False,
        spot_notice_endpoint: str = "http://169.254.169.254",
        spot_notice_interval_seconds: float = 5.0,
        exit_on_stop: bool = True,
        after_commit: Sequence[Callable[[int], None]] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        given = {
            "checkpoint.keep": keep or None,
            "checkpoint.interval_seconds": interval_seconds,
            "preemption.grace_period_seconds": grace_period_seconds or None,
            "report.progress_interval_seconds": progress_interval_seconds,
            **spot_notice_args(spot_notice, spot_notice_endpoint, spot_notice_interval_seconds),
        }
        self.cfg = integration_config(self.env, checkpoint_dir, given)
        self.directory = Path(self.cfg.checkpoint.dir)
        self.epoch = contract.attempt_from_env(self.env)  # fencing's; None: not fenced
        self.reporter = reporter
        self._given_reporter = reporter  # None: the core builds one from the env on rank 0
        self.exit_on_stop = exit_on_stop
        self.after_commit = tuple(after_commit)  # rank 0, once step-N is committed
        self.guard = StopGuard()
        self.stopping = False
        self.resumed_from: Path | None = None
        self._core: TrainerCore | None = None

    # --- resume ------------------------------------------------------------------------

    def resume_path(self) -> str | None:
        """The newest committed, intact checkpoint for ``resume_from_checkpoint``; None
        when there is none. Call it on every rank (rank 0 picks, the others follow)."""
        ctx = DistContext.of_framework(self.env)
        picked: Path | None = None
        newest: int | None = None
        if ctx.is_main:
            fence = commit.prepare(self.directory, self.epoch)
            newest = None if fence is None else fence.epoch
            if self.epoch is None or newest is None or newest <= self.epoch:
                picked = commit.newest_committed(self.directory, self.epoch)
        picked, newest = ctx.broadcast_object((picked, newest))
        if self.epoch is not None and newest is not None and newest > self.epoch:
            what = f"attempt {self.epoch} cannot start"
            raise fencing.fenced(self.directory, None, self.epoch, newest, what)
        self.resumed_from = picked
        if picked is not None:
            log.info("resuming from the committed checkpoint %s", picked)
        return None if picked is None else str(picked)

    # --- Trainer events -------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.guard.install()
        ctx = DistContext.of_framework(self.env)
        core = self._core = TrainerCore(
            self.cfg, ctx, self.env, guard=self.guard, reporter=self._given_reporter
        )
        self.reporter = core.reporter
        if state.is_world_process_zero:
            commit.prepare(self.directory, self.epoch)  # the fence moved in resume_path
            for stale in Path(str(args.output_dir)).glob(f"{HF_CHECKPOINT_PREFIX}*"):
                log.info("removing %s: a save that was never committed", stale)
                shutil.rmtree(stale, ignore_errors=True)
            if self.resumed_from is not None:
                self._report_checkpoint(self.resumed_from)
        core.start_notice_poller()
        core.ctx.barrier()
        core.started(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        core = self._running()
        step = state.global_step
        core.hooks.after_step(step, self.guard)
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        core.report_step(step, core.step_rate(step, batch * args.world_size))
        b = core.agree(step, core.due(step, start=0), finished=step >= state.max_steps)
        if b.stop or b.notice or b.due or b.finished:
            control.should_save = True
        if b.stop:
            self.stopping = True
            control.should_training_stop = True
            log.warning("stop requested (%s): saving step %d", self.guard.stop_reason, step)
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        core = self._running()
        step = state.global_step
        core.ctx.barrier()  # every rank's files (rng_state_<r>.pth) are in the folder
        refused: int | None = None
        if state.is_world_process_zero:
            try:
                self._commit(args, step)
            except CheckpointFenced as e:
                refused = e.fence_epoch
        # Every rank learns whether rank 0 committed: a fenced gang leaves together.
        refused = core.ctx.broadcast_object(refused)
        if refused is not None:
            core.exit_fenced(step, refused)
        core.saved(step)
        if self.stopping and self.exit_on_stop:
            core.exit_stopped(step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self._core is not None:
            self._core.close()

    # --- helpers ------------------------------------------------------------------------

    def _commit(self, args: TrainingArguments, step: int) -> None:
        """Rank 0: commit the Trainer's save of ``step`` into spotrun's layout, prune."""
        core = self._running()
        core.hooks.before_commit(step)
        src = Path(str(args.output_dir)) / f"{HF_CHECKPOINT_PREFIX}{step}"
        meta = {"integration": "transformers.Trainer",
                "attempt": self.env.get(contract.ENV_ATTEMPT, "")}  # fmt: skip
        final = commit.commit_folder(src, self.directory, step, world_size=args.world_size,
                                     meta=meta, epoch=self.epoch)  # fmt: skip
        commit.prune(self.directory, self.cfg.checkpoint.keep, epoch=self.epoch)
        log.info("checkpoint step %d committed at %s", step, final)
        for hook in self.after_commit:
            hook(step)
        self._report_checkpoint(final)
        core.hooks.announce("committed", step)

    def _running(self) -> TrainerCore:
        assert self._core is not None, "on_train_begin first"
        return self._core

    def _report_checkpoint(self, path: Path) -> None:
        marker = read_marker(path) or {}
        if self._core is not None:
            step, committed_at = int(marker.get("step", 0)), str(marker.get("committed_at", ""))
            self._core.report_checkpoint(step, committed_at, str(path))
