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
  into spotrun's layout by :func:`commit.commit_folder` in ``on_save``: ``step-N`` with
  the ``COMMITTED`` manifest. After the save a stop exits the process with 143
  (``contract.EXIT_STOPPED``).
- :meth:`SpotrunCallback.resume_path` is the newest committed, checksum-verified folder:
  the Trainer restores model, optimizer, scheduler, RNG, step and data position from it.
  A folder without the marker is never resumed from.
- ``status.progress`` through :class:`spotrun_trainer.progress.ProgressReporter` on the
  main process (from the env in a cluster, none outside one, or the one passed in).

``checkpoint-*`` folders under ``args.output_dir`` are staging: a leftover of a killed
save is removed at the next start. ``load_best_model_at_end`` is not supported (the
Trainer's best-checkpoint path moves away).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from spotrun_api import contract
from spotrun_trainer.integrations import commit
from spotrun_trainer.integrations.ranks import Ranks
from spotrun_trainer.preemption import SpotNoticePoller, StopGuard
from spotrun_trainer.progress import ProgressReporter, reporter_from_env
from spotrun_trainer.testhooks import TestHooks

log = logging.getLogger(__name__)

HF_CHECKPOINT_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


class SpotrunCallback(TrainerCallback):
    """spotrun's checkpoint, stop and progress handling for a Hugging Face ``Trainer``."""

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
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        chosen = checkpoint_dir or self.env.get(contract.ENV_CHECKPOINT_DIR) or "./checkpoints"
        self.directory = Path(chosen)
        self.keep = keep or int(self.env.get(contract.ENV_CHECKPOINT_KEEP) or 3)
        env_interval = _env_float(self.env, contract.ENV_CHECKPOINT_INTERVAL_SECONDS, 0.0)
        self.interval_seconds = env_interval if interval_seconds is None else interval_seconds
        self.grace = grace_period_seconds or _env_float(
            self.env,
            contract.ENV_TERMINATION_GRACE_SECONDS,
            contract.DEFAULT_TERMINATION_GRACE_SECONDS,
        )
        self.reporter = reporter
        self._own_reporter = reporter is None
        self.progress_interval_seconds = progress_interval_seconds
        self.spot_notice, self.spot_notice_endpoint = spot_notice, spot_notice_endpoint
        self.spot_notice_interval_seconds = spot_notice_interval_seconds
        self.exit_on_stop = exit_on_stop
        self.guard = StopGuard()
        self.stopping = False
        self.resumed_from: Path | None = None
        self._poller: SpotNoticePoller | None = None
        self._ranks: Ranks | None = None
        self._hooks: TestHooks | None = None
        self._last_save = time.monotonic()
        self._t0: tuple[float, int] | None = None

    # --- resume ------------------------------------------------------------------------

    def resume_path(self) -> str | None:
        """The newest committed, intact checkpoint for ``resume_from_checkpoint``; None
        when there is none. Call it on every rank (rank 0 picks, the others follow)."""
        ranks = Ranks()
        picked: Path | None = None
        if ranks.rank == 0:
            commit.prepare(self.directory)
            picked = commit.newest_committed(self.directory)
        picked = ranks.broadcast_object(picked)
        self.resumed_from = picked
        if picked is not None:
            log.info("resuming from the committed checkpoint %s", picked)
        return None if picked is None else str(picked)

    # --- Trainer events -------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.guard.install()
        self._ranks = Ranks()
        self._hooks = TestHooks(self.env, args.process_index)
        self._last_save = time.monotonic()
        if state.is_world_process_zero:
            commit.prepare(self.directory)
            for stale in Path(str(args.output_dir)).glob(f"{HF_CHECKPOINT_PREFIX}*"):
                log.info("removing %s: a save that was never committed", stale)
                shutil.rmtree(stale, ignore_errors=True)
            if self._own_reporter:
                self.reporter = reporter_from_env(self.env, self.progress_interval_seconds)
            if self.reporter is not None and self.resumed_from is not None:
                self._report_checkpoint(self.resumed_from)
        if self.spot_notice and args.local_process_index == 0:
            self._poller = SpotNoticePoller(
                lambda notice: self.guard.request_save(f"spot notice {notice}"),
                endpoint=self.spot_notice_endpoint,
                interval=self.spot_notice_interval_seconds,
            ).start()
        self._ranks.barrier()
        self._hooks.started(state.global_step, self.guard)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> TrainerControl:
        assert self._ranks is not None and self._hooks is not None, "on_train_begin first"
        step = state.global_step
        self._hooks.after_step(step, self.guard)
        self._report_step(args, step)
        due = 0 < self.interval_seconds <= time.monotonic() - self._last_save
        stop, save_now, due = self._ranks.agree(
            [self.guard.stop_requested.is_set(), self.guard.save_requested.is_set(), due]
        )
        if save_now:
            self.guard.take_save_request()
            log.warning("saving at step %d: %s", step, self.guard.save_reason or "peer rank")
        if stop or save_now or due or step >= state.max_steps:
            control.should_save = True
        if stop:
            self.stopping = True
            control.should_training_stop = True
            log.warning("stop requested (%s): saving step %d", self.guard.stop_reason, step)
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        assert self._ranks is not None and self._hooks is not None, "on_train_begin first"
        step = state.global_step
        self._ranks.barrier()  # every rank's files (rng_state_<r>.pth) are in the folder
        if state.is_world_process_zero:
            self._hooks.before_commit(step)
            src = Path(str(args.output_dir)) / f"{HF_CHECKPOINT_PREFIX}{step}"
            final = commit.commit_folder(
                src,
                self.directory,
                step,
                world_size=args.world_size,
                meta={"integration": "transformers.Trainer", "attempt": self.env.get(
                    contract.ENV_ATTEMPT, "")},
            )  # fmt: skip
            commit.prune(self.directory, self.keep)
            log.info("checkpoint step %d committed at %s", step, final)
            self._hooks.announce("committed", step)
            self._report_checkpoint(final)
        self._ranks.barrier()
        self._last_save = time.monotonic()
        if self.stopping and self.exit_on_stop:
            self._exit_stopped(step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._close()

    # --- helpers ------------------------------------------------------------------------

    def _exit_stopped(self, step: int) -> None:
        since = time.monotonic() - (self.guard.stop_time or time.monotonic())
        log.warning(
            "stopped (%s): step %d committed %.1fs after the request (grace period %.0fs); "
            "exiting %d",
            self.guard.stop_reason or "peer rank",
            step,
            since,
            self.grace,
            contract.EXIT_STOPPED,
        )
        self._close()
        raise SystemExit(contract.EXIT_STOPPED)

    def _close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        if self.reporter is not None:
            self.reporter.close()
        self.guard.uninstall()

    def _report_step(self, args: TrainingArguments, step: int) -> None:
        if self.reporter is None:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = (now, step)
            self.reporter.step(step)
            return
        t0, s0 = self._t0
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        sps = (step - s0) * batch * args.world_size / (now - t0) if now > t0 else None
        self.reporter.step(step, sps)

    def _report_checkpoint(self, path: Path) -> None:
        marker = commit.read_marker(path) or {}
        if self.reporter is not None:
            self.reporter.checkpoint(
                int(marker.get("step", 0)), str(marker.get("committed_at", "")), str(path)
            )
