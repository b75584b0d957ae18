"""The trainer core: what every loop does at a step boundary, whoever owns the loop.

One :class:`TrainerCore` serves the built-in trainer's loop (``spotrun_lm.loop.TrainLoop``),
a plain loop (``integrations.loop.SpotrunLoop``) and the Hugging Face ``Trainer``
(``integrations.hf.SpotrunCallback``); each of those is an adapter that says when a step
ends and how its framework saves. The core owns:

- the operator's contract env, read once through the run's config (``config.env_config``
  for the integrations, ``spotrun_lm.config.load_config`` for the built-in trainer, both
  through ``config.apply_env``; defaults from ``spotrun_api.contract``);
- rank agreement: at each boundary every rank ORs its stop, save-now (spot notice) and
  save-due flags with the others' (one all_reduce MAX on the control group), so every rank
  saves the same step and a stop lands between two optimizer steps;
- the stop protocol: signals only raise flags (``preemption.StopGuard``); after the agreed
  stop's checkpoint is committed the process exits 143 (``contract.EXIT_STOPPED``);
- fencing (fencing.py): the epoch is the attempt (``SPOTRUN_ATTEMPT``); a commit refused in
  the writer thread because a newer attempt moved the fence makes every rank leave at the
  next boundary with ``contract.EXIT_FENCED``;
- progress: ``status.progress`` on the main rank (step, samples/s, each checkpoint), the
  spot-notice poller and the test hooks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from spotrun_api import contract
from spotrun_trainer import phases
from spotrun_trainer.checkpoint import CheckpointInfo, CheckpointSettings, RankPlace
from spotrun_trainer.config import CheckpointConfig, RunConfig, RunSettings, env_config
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.fencing import CheckpointFenced, fenced, newest_epoch, refused_by
from spotrun_trainer.launcher import record_exit
from spotrun_trainer.peers import start_monitor
from spotrun_trainer.preemption import SpotNoticePoller, StopGuard
from spotrun_trainer.progress import ProgressReporter, reporter_from_env
from spotrun_trainer.shard_writer import WriterOptions
from spotrun_trainer.testhooks import TestHooks

__all__ = [
    "INTEGRATION_INTERVAL_SECONDS",
    "Boundary",
    "TrainerCore",
    "checkpoint_settings",
    "integration_config",
    "spot_notice_args",
]

log = logging.getLogger("spotrun_trainer")

# The checkpoint interval of a loop spotrun does not own when the operator's env names none
# (outside a TrainingRun): no timed saves, only those asked for (steps, a stop, a notice,
# the end), as docs/integrations.md documents. The CLI's default is the contract's
# (DEFAULT_CHECKPOINT_INTERVAL_SECONDS); in a TrainingRun the operator always sets it.
INTEGRATION_INTERVAL_SECONDS = 0.0


@dataclass
class Boundary:
    """What the ranks agreed at a step boundary."""

    step: int
    stop: bool
    notice: bool
    due: bool
    finished: bool = False


def integration_config(
    env: Mapping[str, str], checkpoint_dir: str | Path | None, given: Mapping[str, Any]
) -> RunConfig:
    """The config of a loop spotrun does not own: the operator's env over the defaults (no
    timed saves unless the env names an interval), then ``checkpoint_dir`` and each
    argument in ``given`` (dotted config key -> value; None: not given)."""
    cfg = env_config(env, interval_seconds=INTEGRATION_INTERVAL_SECONDS)
    if checkpoint_dir:
        cfg.checkpoint.dir = str(checkpoint_dir)
    for dotted, value in given.items():
        if value is not None:
            section, key = dotted.split(".")
            setattr(getattr(cfg, section), key, value)
    return cfg


def spot_notice_args(enabled: bool, endpoint: str, interval: float) -> dict[str, Any]:
    """The integrations' spot-notice arguments as config keys."""
    return {
        "preemption.spot_notice": enabled,
        "preemption.spot_notice_endpoint": endpoint,
        "preemption.spot_notice_interval_seconds": interval,
    }


def checkpoint_settings(
    ck: CheckpointConfig, keep_best: bool | None = None, env: Mapping[str, str] | None = None
) -> CheckpointSettings:
    """The checkpoint manager's settings from the run's checkpoint section; the fencing
    epoch is the attempt the operator names in ``env`` (default: this process's)."""
    return CheckpointSettings(
        keep=ck.keep,
        keep_best=ck.keep_best if keep_best is None else keep_best,
        async_save=ck.async_save,
        async_mode=ck.async_mode,
        overlap_staging=ck.overlap_staging,
        writer=WriterOptions(max_write_mb_per_s=ck.writer_max_mb_per_s),
        commit_timeout=ck.commit_timeout_seconds,
        epoch=contract.attempt_from_env(os.environ if env is None else env),
    )


class TrainerCore:
    """Agreement, the save / stop / exit-143 protocol and progress for one loop.

    ``reporter``: the ``status.progress`` sink; None builds one from the env on the main
    rank (none outside a cluster) unless ``own_reporter`` is False."""

    def __init__(
        self,
        cfg: RunSettings,
        ctx: DistContext,
        env: Mapping[str, str],
        *,
        guard: StopGuard | None = None,
        reporter: ProgressReporter | None = None,
        own_reporter: bool = True,
    ) -> None:
        self.cfg, self.ctx, self.env = cfg, ctx, env
        self.epoch = contract.attempt_from_env(env)  # fencing's; None outside the operator
        self.guard = guard or StopGuard()
        self.hooks = TestHooks(env, ctx.rank)
        self.reporter = reporter
        if reporter is None and own_reporter and ctx.is_main:
            self.reporter = reporter_from_env(env, cfg.report.progress_interval_seconds)
        self.last_saved: int | None = None
        self.last_save_time = time.monotonic()
        self._poller: SpotNoticePoller | None = None
        self._rate_origin: tuple[float, int] | None = None
        # A framework's process group (the integrations) has no heartbeat of its own: the
        # core runs one for this loop, so the survivors of a dead peer leave with
        # EXIT_PEER_LOST in seconds instead of waiting in a collective (peers.py).
        self._own_peers = ctx.distributed and ctx.peers is None
        self._excepthook = sys.excepthook
        if self._own_peers:
            ctx.peers = start_monitor(ctx.rank, ctx.world_size, env)
            # The user's own collectives (DDP's gradient all-reduce in backward) are not
            # spotrun's to wrap: an error escaping the script asks the heartbeat first,
            # and a confirmed dead peer ends the rank with EXIT_PEER_LOST instead of 1.
            sys.excepthook = self._judge_uncaught
        self._last_boundary = time.monotonic()

    def place(self) -> RankPlace:
        """Where this rank stands, for the checkpoint manager."""
        return RankPlace(self.ctx.rank, self.ctx.world_size, self.ctx, self.ctx.checkpoint_group)

    # --- start and end ---------------------------------------------------------------------

    def start_notice_poller(self) -> None:
        """With ``preemption.spot_notice``, local rank 0 polls the EC2 spot notice; a notice
        asks for a save at the next boundary."""
        p = self.cfg.preemption
        if p.spot_notice and self.ctx.local_rank == 0 and self._poller is None:
            self._poller = SpotNoticePoller(
                lambda notice: self.guard.request_save(f"spot notice {notice}"),
                endpoint=p.spot_notice_endpoint,
                interval=p.spot_notice_interval_seconds,
            ).start()

    def started(self, step: int) -> None:
        """Training starts (or goes on) at ``step``: the save interval counts from now."""
        self.last_save_time = time.monotonic()
        self.hooks.started(step, self.guard)

    def stop_notice_poller(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def close(self) -> None:
        """Stop the poller and the heartbeat this core started (a clean leave: peers do not
        count this rank as lost), flush the reporter, give the signals back."""
        self.stop_notice_poller()
        if self._own_peers and self.ctx.peers is not None:
            self.ctx.peers.stop(clean=True)
            self.ctx.peers = None
            sys.excepthook = self._excepthook
        if self.reporter is not None:
            self.reporter.close()
        self.guard.uninstall()

    def _judge_uncaught(
        self, kind: type[BaseException], error: BaseException, tb: TracebackType | None
    ) -> None:
        if isinstance(error, RuntimeError) and self.ctx.peers is not None:
            self.ctx.peers.after_error(error)  # exits EXIT_PEER_LOST when a peer is gone
        self._excepthook(kind, error, tb)

    # --- the boundary ------------------------------------------------------------------------

    def due(self, step: int, start: int) -> bool:
        """A save is due: ``interval_seconds`` since the last one, or every
        ``interval_steps`` steps after ``start``."""
        ck = self.cfg.checkpoint
        timed = 0 < ck.interval_seconds <= time.monotonic() - self.last_save_time
        n = ck.interval_steps
        return timed or (n > 0 and step > start and step % n == 0)

    def agree(self, step: int, due: bool, finished: bool = False) -> Boundary:
        """Every rank's stop, save-now and ``due`` flags, ORed over the ranks. A save-now
        request is consumed here, once, whichever rank saw it. A commit of this attempt
        refused by the fence (on rank 0, maybe in the writer thread) makes every rank
        leave here with ``CheckpointFenced``."""
        guard = self.guard
        refused = self.epoch is not None and refused_by(self.cfg.checkpoint.dir, self.epoch)
        flags = [guard.stop_requested.is_set(), guard.save_requested.is_set(), due, bool(refused)]
        if self._own_peers:  # a step's length widens a peer's allowed silence
            now = time.monotonic()
            self.ctx.observe_step(now - self._last_boundary)
            self._last_boundary = now
            with self.ctx.peers_checked():
                stop, notice, due, refused = self.ctx.agree(flags)
        else:
            stop, notice, due, refused = self.ctx.agree(flags)
        if refused:
            self.exit_fenced(step)
        if notice:
            guard.take_save_request()
            log.warning("saving at step %d: %s", step, guard.save_reason or "peer rank")
        return Boundary(step, stop, notice, due, finished)

    def saved(self, step: int) -> None:
        """A save of ``step`` started: the interval counts from now."""
        self.last_saved, self.last_save_time = step, time.monotonic()

    def seconds_since_stop(self) -> float:
        """Since the stop request this rank saw (0 when the stop came from a peer)."""
        stop_time = self.guard.stop_time
        return 0.0 if stop_time is None else time.monotonic() - stop_time

    def stop_message(self, step: int) -> str:
        since = self.seconds_since_stop()
        return (
            f"stopped ({self.guard.stop_reason or 'peer rank'}): step {step} committed "
            f"{since:.1f}s after the request (grace period "
            f"{self.cfg.preemption.grace_period_seconds:.0f}s)"
        )

    def exit_stopped(self, step: int) -> NoReturn:
        """The stop's checkpoint is committed on every rank: leave with EXIT_STOPPED."""
        log.warning("%s; exiting %d", self.stop_message(step), contract.EXIT_STOPPED)
        self.close()
        record_exit(contract.EXIT_STOPPED)  # for a launcher of this rank (launcher.py)
        raise SystemExit(contract.EXIT_STOPPED)

    def exit_fenced(self, step: int, fence_epoch: int | None = None) -> NoReturn:
        """A newer attempt moved the fence: leave with EXIT_FENCED on every rank."""
        assert self.epoch is not None
        directory = Path(self.cfg.checkpoint.dir)
        newest = fence_epoch or newest_epoch(directory) or self.epoch + 1
        error: CheckpointFenced = fenced(
            directory, step, self.epoch, newest, f"leaving at step {step}"
        )
        self.close()
        raise error

    # --- progress ----------------------------------------------------------------------------

    def step_rate(self, step: int, samples_per_step: float | None) -> float | None:
        """Samples per second since the first step reported (None before a second one)."""
        now = time.monotonic()
        if self._rate_origin is None:
            self._rate_origin = (now, step)
            return None
        t0, s0 = self._rate_origin
        if samples_per_step is None or now <= t0:
            return None
        return (step - s0) * samples_per_step / (now - t0)

    def report_step(self, step: int, samples_per_second: float | None) -> None:
        if not phases.CLOCK.reported:
            self.report_phases()
        if self.reporter is not None:
            self.reporter.step(step, samples_per_second)

    def report_phases(self) -> None:
        """The first step is done: the restart phases (phases.py), once per process, as a
        log line on the main rank and in ``status.progress.restartPhases``."""
        found = phases.CLOCK.take(self.epoch)
        if found is None or not self.ctx.is_main:
            return
        log.info("%s", phases.format_line(found))
        if self.reporter is not None:
            self.reporter.restart_phases(found.to_progress())

    def report_checkpoint(self, step: int, committed_at: str, path: str) -> None:
        if self.reporter is not None:
            self.reporter.checkpoint(step, committed_at, path)

    def committed(self, info: CheckpointInfo) -> None:
        """Rank 0, after a commit: report it, then tell the tests."""
        self.report_checkpoint(info.step, info.committed_at, str(info.path))
        self.hooks.announce("committed", info.step)
