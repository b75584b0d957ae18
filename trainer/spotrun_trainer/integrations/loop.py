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
``sharded`` parts are written by every rank through torch.distributed.checkpoint (an FSDP2
model and its optimizer: ``{"train": sharded.ShardedState(model, opt)}``) and reshard on
load to another world size. Checkpoints go through
:class:`spotrun_trainer.checkpoint.CheckpointManager`: spotrun's ``step-N`` layout and
commit protocol, checksum verification and fallback on load, and in a TrainingRun the
fence (an attempt that a newer one has fenced leaves with ``contract.EXIT_FENCED``, a
``SystemExit`` out of ``resume``, ``step_end`` or ``finish``).

With ``best=True`` the loop also keeps the checkpoint of the lowest validation metric,
apart from the rolling ones (``<dir>/best/step-N``, :mod:`spotrun_trainer.best`)::

    if spot.offer_best(step, val_loss, sharded={"model": ShardedModel(model)}): ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from spotrun_trainer import phases
from spotrun_trainer.best import BEST_DIR, BestCheckpoint
from spotrun_trainer.checkpoint import CheckpointHooks, CheckpointManager
from spotrun_trainer.checkpoint_io import committed_steps
from spotrun_trainer.core import (
    TrainerCore,
    checkpoint_settings,
    integration_config,
    spot_notice_args,
)
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.peers import collective_timeout
from spotrun_trainer.progress import ProgressReporter
from spotrun_trainer.state import ModelState, RNGState, Stateful

log = logging.getLogger(__name__)


# The key of the best checkpoint's tracker among the shared parts (``best=True``).
BEST_PART = "best_checkpoint"


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
        sharded: Mapping[str, Stateful] | None = None,
        best: bool = False,
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
        self.sharded: dict[str, Stateful] = dict(sharded or {})
        ctx = DistContext.of_framework(self.env)
        if self.sharded and ctx.distributed:
            # DCP's collectives get a gloo group of their own, so an async save's (in a
            # thread) never interleave with the loop's. Collective: every rank builds this.
            timeout = collective_timeout(self.env)  # new_group does not inherit the default's
            ctx.checkpoint_group = dist.new_group(backend="gloo", timeout=timeout)
        phases.CLOCK.mark("process_group")  # spotrun's own groups are up
        self.core = TrainerCore(cfg, ctx, self.env, reporter=reporter)
        settings = checkpoint_settings(cfg.checkpoint, keep_best=False, env=self.env)
        self.best: BestCheckpoint | None = None
        if best:  # the best so far travels with the rolling checkpoints
            self.best = BestCheckpoint(
                Path(cfg.checkpoint.dir) / BEST_DIR, settings, self.core.place()
            )
            self.shared[BEST_PART] = self.best
        self.manager = CheckpointManager(
            Path(cfg.checkpoint.dir),
            settings,
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
        if self.best is not None:
            self.best.prepare()
        info = self.manager.load(self.shared, self.per_rank, sharded=self.sharded or None)
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
        return self.manager.save(step, self.shared, self.per_rank, sharded=self.sharded or None)

    def offer_best(
        self,
        step: int,
        metric: float,
        *,
        shared: Mapping[str, Any] | None = None,
        sharded: Mapping[str, Stateful] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """With ``best=True``: when ``metric`` (lower is better; rank 0's counts) beats the
        best so far, commit ``shared`` and ``sharded`` as ``<dir>/best/step-<step>`` and
        drop the previous best; True when it did. Every rank calls it at the same step."""
        if self.best is None:
            raise RuntimeError("offer_best needs SpotrunLoop(..., best=True)")
        parts = {k: _stateful(v) for k, v in (shared or {}).items()}
        self.manager.wait()  # an async rolling save would share the checkpoint group
        return self.best.offer(step, metric, shared=parts, sharded=sharded, meta=meta)

    @property
    def best_metric(self) -> float | None:
        """The lowest metric offered so far in this run (resumed runs included)."""
        return None if self.best is None else self.best.metric

    @property
    def last_committed(self) -> int | None:
        """The newest committed ``step-N`` in the checkpoint folder (listed, not verified)."""
        steps = committed_steps(self.manager.directory)
        return steps[-1][0] if steps else None

    def finish(self, step: int) -> None:
        """The final checkpoint, waited for; then release signals and the reporter."""
        if self.core.last_saved != step:
            self.save(step)
        self.manager.wait()
        self.core.ctx.barrier()
        self.close()

    def close(self) -> None:
        self.core.close()
