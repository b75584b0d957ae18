"""The step loop: agree at each boundary, evaluate, save when due, take one optimizer step.

The boundary protocol (the ranks agree on stop, save-now and save-due; a stop lands between
two optimizer steps) is :class:`spotrun_trainer.core.TrainerCore`'s; this loop adds what
spotrun's own loop does beside it: evaluation, the best checkpoint, the stall of each save,
the faults and metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from spotrun_api import contract
from spotrun_lm.config import TrainConfig, to_dict
from spotrun_lm.data import to_batch, validation_batches
from spotrun_lm.faults import FaultInjector
from spotrun_lm.models import compute_loss
from spotrun_lm.parts import TrainParts
from spotrun_trainer.checkpoint import CheckpointManager
from spotrun_trainer.core import Boundary, TrainerCore
from spotrun_trainer.distributed import DistContext
from spotrun_trainer.metrics import TrainerMetrics

log = logging.getLogger("spotrun_lm")


@dataclass
class LoopIO:
    """The loop's companions: checkpoints, the core (signals, test hooks, reporting),
    faults, metrics."""

    manager: CheckpointManager
    core: TrainerCore
    faults: FaultInjector
    metrics: TrainerMetrics


class TrainLoop:
    def __init__(
        self, cfg: TrainConfig, ctx: DistContext, parts: TrainParts, io: LoopIO, last_saved: int
    ) -> None:
        self.cfg, self.ctx, self.p, self.io = cfg, ctx, parts, io
        io.core.last_saved = last_saved if last_saved >= 0 else None
        self.start_step = parts.progress.step
        self.window_start, self.window_samples = time.monotonic(), 0
        self.samples_per_second: float | None = None
        self.stall_pending = False  # a save's stall is known once its staging is waited for
        self.global_batch = parts.batch_size * ctx.world_size
        self.amp_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16
        self.val = validation_batches(
            parts.val_rows, parts.batch_size, cfg.eval_batches, ctx.rank, ctx.world_size
        )

    def run(self) -> tuple[int, bool]:
        """Train until a stop or max_steps; (the last step, whether it was a stop). The
        save of that step is committed (or has failed) when this returns."""
        self.io.core.started(self.start_step)
        self.p.train_model.train()
        # A collective that fails because a peer is gone (gloo: "Connection reset by peer")
        # ends this rank with EXIT_PEER_LOST rather than as an application error.
        with self.ctx.peers_checked():
            while True:
                b = self.agree()
                metric, new_best = self.maybe_evaluate(b.step)
                self.maybe_save(b, metric, new_best)
                if b.stop or b.finished:
                    return b.step, b.stop
                started = time.monotonic()
                loss = self.train_step()
                # The measured step time scales how long a peer may be silent
                # (spotrun_trainer.peers).
                self.ctx.observe_step(time.monotonic() - started)
                self.after_step(loss)

    def agree(self) -> Boundary:
        step, io = self.p.progress.step, self.io
        io.faults.at_boundary(step, settle=lambda: io.manager.wait(raise_errors=False))
        due = io.core.due(step, self.start_step)
        return io.core.agree(step, due, finished=step >= self.cfg.max_steps)

    def maybe_evaluate(self, step: int) -> tuple[float | None, bool]:
        every = self.cfg.eval_every
        if not every or step <= self.start_step or step % every:
            return None, False
        metric = self.evaluate()
        prog, new_best = self.p.progress, False
        if prog.best_metric is None or metric < prog.best_metric:
            prog.best_metric, prog.best_step, new_best = metric, step, True
        if self.ctx.is_main:
            log.info("step %d: validation loss %.4f (best %.4f at step %s)",
                     step, metric, prog.best_metric, prog.best_step)  # fmt: skip
        return metric, new_best

    def evaluate(self) -> float:
        model, cfg, device = self.p.model, self.cfg, self.ctx.device
        model.eval()
        gen = torch.Generator().manual_seed(cfg.seed + 17)  # fixed views; global RNG untouched
        total = 0.0
        with torch.no_grad(), torch.autocast(device.type, dtype=self.amp_dtype, enabled=cfg.amp):
            for batch in self.val:
                total += float(compute_loss(model, batch.to(device), cfg.model, gen))
        model.train()
        return self.ctx.mean(total / max(1, len(self.val)))

    def maybe_save(self, b: Boundary, metric: float | None, new_best: bool) -> None:
        core = self.io.core
        if b.stop or b.notice or b.finished:
            # The node is going or the run ends (some rank's guard may have raised it
            # already): a paced write in flight, and this save, go as fast as they can.
            self.io.manager.hurry.set()
        keep_best = self.cfg.checkpoint.keep_best
        wanted = b.stop or b.notice or b.due or b.finished or (new_best and keep_best)
        if self.stall_pending:  # a save at the very next boundary: report the previous one
            self.report_stall()
        if wanted and b.step != core.last_saved:
            # The last save of a run is synchronous: nothing may still be writing at exit.
            self.save(b.step, metric, blocking=b.stop or b.finished)
            core.saved(b.step)

    def save(self, step: int, metric: float | None, blocking: bool) -> None:
        p, io = self.p, self.io
        meta = {
            "tokens_seen": p.progress.tokens_seen,
            "attempt": io.core.env.get(contract.ENV_ATTEMPT),
            "world_size": self.ctx.world_size,
            "global_batch_size": self.global_batch,
            "config": to_dict(self.cfg),
            "model": self.cfg.model.kind,
        }
        io.manager.save(step, p.shared, p.per_rank, metric=metric, meta=meta,
                        sharded=p.sharded or None, blocking=blocking)  # fmt: skip
        # With overlapped staging the loop may still block before the next optimizer
        # step (CheckpointManager.wait_staged): the stall is reported after that step.
        self.stall_pending = True
        if blocking or not io.manager.staging_in_flight:
            self.report_stall(periodic=not blocking)

    def report_stall(self, periodic: bool = True) -> None:
        """Report the newest save's stall: the time ``save`` blocked the loop plus any wait
        for its staging copy before the optimizer step."""
        self.stall_pending = False
        io = self.io
        io.manager.wait_staged()  # nothing left to wait for when a step ran since the save
        stall = io.manager.last_stall_seconds
        io.metrics.checkpoint_stall_seconds.observe(stall)
        reporter = io.core.reporter
        if reporter is not None and periodic:  # a final save is not a periodic cost
            reporter.save_stall(stall)

    def train_step(self) -> torch.Tensor:
        p, cfg, device = self.p, self.cfg, self.ctx.device
        idx = p.sampler.next_indices()
        self.io.core.hooks.samples(p.progress.step + 1, idx)
        batch = to_batch(p.train_rows, idx).to(device)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=cfg.amp):
            loss = compute_loss(p.train_model, batch, cfg.model)
        p.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if cfg.optim.grad_clip > 0:
            p.scaler.unscale_(p.optimizer)
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), cfg.optim.grad_clip)
        # An overlapped checkpoint staging copy must be done before the state changes
        # (the optimizer's step pre-hook waits for it too; this makes the wait explicit).
        self.io.manager.wait_staged()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.scheduler.step()
        p.optimizer.zero_grad(set_to_none=True)
        prog = p.progress
        prog.step += 1
        prog.samples_seen += self.global_batch
        prog.tokens_seen += self.global_batch * cfg.model.seq_len
        self.window_samples += self.global_batch
        return loss

    def after_step(self, loss: torch.Tensor) -> None:
        step, io = self.p.progress.step, self.io
        if self.stall_pending:
            self.report_stall()
        io.core.hooks.after_step(step, io.core.guard, loss)
        io.faults.after_step()
        every = self.cfg.report.log_every
        if every and step % every == 0:
            now = time.monotonic()
            self.samples_per_second = self.window_samples / max(now - self.window_start, 1e-9)
            self.window_start, self.window_samples = now, 0
            loss_value = float(loss.detach())
            io.metrics.loss.set(loss_value)
            io.metrics.samples_per_second.set(self.samples_per_second)
            if self.ctx.is_main:
                log.info("step %d: loss %.4f, %.1f samples/s, lr %.2e", step, loss_value,
                         self.samples_per_second, self.p.scheduler.get_last_lr()[0])  # fmt: skip
        io.metrics.step.set(step)
        io.core.report_step(step, self.samples_per_second)
