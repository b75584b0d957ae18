"""The training loop: resume, train, checkpoint at agreed steps, stop cleanly.

At every step boundary the ranks agree (one all_reduce MAX) on three flags: stop (a
signal), save-now (spot notice) and save-due (time interval). Agreement is what makes
every rank write the same step, and a stop always lands between two optimizer steps.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from torch.nn.parallel import DistributedDataParallel

from spotrun_trainer import contract
from spotrun_trainer.checkpoint import CheckpointError, CheckpointInfo, CheckpointManager
from spotrun_trainer.config import TrainConfig, to_dict
from spotrun_trainer.data import (
    ResumableSampler,
    load_tokens,
    split,
    synthetic_tokens,
    to_batch,
    validation_batches,
)
from spotrun_trainer.distributed import DistContext, init_distributed, shutdown
from spotrun_trainer.faults import FaultInjector
from spotrun_trainer.metrics import TrainerMetrics
from spotrun_trainer.models import build_model, compute_loss, count_parameters
from spotrun_trainer.preemption import SpotNoticePoller, StopGuard
from spotrun_trainer.progress import reporter_from_env
from spotrun_trainer.s3mirror import S3Mirror
from spotrun_trainer.state import ModelState, RNGState, TrainProgress, seed_everything
from spotrun_trainer.testhooks import TestHooks

log = logging.getLogger("spotrun_trainer")

EXIT_MARGIN_SECONDS = 2.0  # of the grace period, left for leaving the process group and exit


@dataclass
class WarmupCosine:
    """LR multiplier: linear warm-up, cosine decay to ``floor``. A class, not a lambda, so
    LambdaLR's state_dict records it."""

    warmup: int
    total: int
    floor: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        frac = min(1.0, (step - self.warmup) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac))


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def run(cfg: TrainConfig, env: Mapping[str, str] = os.environ) -> int:
    """Train per ``cfg``; returns contract.EXIT_DONE or contract.EXIT_STOPPED."""
    # First, so a SIGTERM during start-up is remembered and honoured at the first boundary.
    guard = StopGuard().install()
    try:
        ctx = init_distributed(cfg.device, env)
        setup_logging(ctx.rank)
        try:
            with ExitStack() as stack:
                return _train(cfg, ctx, env, stack, guard)
        finally:
            shutdown(ctx)
    finally:
        guard.uninstall()


def _train(
    cfg: TrainConfig, ctx: DistContext, env: Mapping[str, str], stack: ExitStack, guard: StopGuard
) -> int:
    hooks = TestHooks(env, ctx.rank)
    faults = FaultInjector(cfg.fault, ctx.rank, env)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = ctx.device

    seed_everything(cfg.seed)  # identical init on every rank
    model = build_model(cfg.model).to(device)
    tokens = (
        load_tokens(cfg.data.path, cfg.model.seq_len)
        if cfg.data.path
        else synthetic_tokens(
            cfg.data.num_samples, cfg.model.seq_len, cfg.model.vocab_size, cfg.seed
        )
    )
    train_rows, val_rows = split(tokens, cfg.data.val_fraction)
    sampler = ResumableSampler(len(train_rows), cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(o.warmup_steps, cfg.max_steps)
    )
    use_scaler = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    progress = TrainProgress()
    shared: dict[str, Any] = {
        "model": ModelState(model),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "sampler": sampler,
        "progress": progress,
    }
    per_rank: dict[str, Any] = {"rng": RNGState()}
    seed_everything(cfg.seed + 7919 * (ctx.rank + 1))  # distinct dropout/masks per rank

    metrics = TrainerMetrics(CollectorRegistry())
    port = cfg.report.metrics_port
    if port and (ctx.is_main or cfg.report.metrics_all_ranks):
        try:
            metrics.serve(port + (ctx.local_rank if cfg.report.metrics_all_ranks else 0))
            stack.callback(metrics.close)
        except OSError as e:
            log.warning("metrics endpoint off: %s", e)
    reporter = reporter_from_env(env, cfg.report.progress_interval_seconds) if ctx.is_main else None
    if reporter is not None:
        stack.callback(reporter.close)
    ck = cfg.checkpoint
    mirror = S3Mirror(ck.s3_uri, ck.s3_endpoint_url) if ck.s3_uri and ctx.is_main else None
    if mirror is not None:
        stack.callback(_close_mirror, mirror, cfg, guard)

    grace_warned = False

    def on_commit(info: CheckpointInfo) -> None:
        nonlocal grace_warned
        metrics.observe_checkpoint(info.seconds, info.bytes, time.time())
        grace_warned = _warn_if_past_grace(info, cfg.preemption.grace_period_seconds, grace_warned)
        if reporter is not None:
            reporter.checkpoint(info.step, info.committed_at, str(info.path))
        if mirror is not None:
            mirror.enqueue(info.path, ck.keep, ck.keep_best)
        hooks.announce("committed", info.step)

    manager = CheckpointManager(
        ck.dir,
        rank=ctx.rank,
        world_size=ctx.world_size,
        keep=ck.keep,
        keep_best=ck.keep_best,
        async_save=ck.async_save,
        commit_timeout=ck.commit_timeout_seconds,
        collectives=ctx,
        restore_missing=mirror.restore_latest if mirror is not None else None,
        on_commit=on_commit,
        before_commit=hooks.before_commit,
        after_write=faults.slow_save,
    )
    manager.prepare()
    loaded = manager.load(shared, per_rank, map_location=device)
    last_saved: int | None = None
    if loaded is not None:
        last_saved = loaded.step
        log.info("resumed from %s (step %d)", loaded.path, loaded.step)
        metrics.step.set(loaded.step)
        if reporter is not None:
            reporter.checkpoint(loaded.step, loaded.committed_at, str(loaded.path))
    elif ctx.is_main:
        log.info("no checkpoint in %s: starting from scratch", ck.dir)
    log.info(
        "model %s: %d parameters; world size %d on %s",
        cfg.model.kind,
        count_parameters(model),
        ctx.world_size,
        device,
    )
    train_model: torch.nn.Module = model
    if ctx.distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.preemption.spot_notice and ctx.local_rank == 0:
        poller = SpotNoticePoller(
            lambda notice: guard.request_save(f"spot notice {notice}"),
            endpoint=cfg.preemption.spot_notice_endpoint,
            interval=cfg.preemption.spot_notice_interval_seconds,
        ).start()
        stack.callback(poller.stop)

    val = validation_batches(val_rows, cfg.batch_size, cfg.eval_batches, ctx.rank, ctx.world_size)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    start_step = progress.step
    last_save_time = time.monotonic()
    window_start, window_samples = time.monotonic(), 0
    samples_per_second: float | None = None
    global_batch = cfg.batch_size * ctx.world_size
    hooks.started(start_step, guard)

    def evaluate() -> float:
        model.eval()
        gen = torch.Generator().manual_seed(cfg.seed + 17)  # fixed views; global RNG untouched
        total = 0.0
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
            for batch in val:
                total += float(compute_loss(model, batch.to(device), cfg.model, gen))
        model.train()
        return ctx.mean(total / max(1, len(val)))

    def save(step: int, metric: float | None) -> None:
        stall = manager.save(
            step,
            shared,
            per_rank,
            metric=metric,
            meta={
                "tokens_seen": progress.tokens_seen,
                "attempt": env.get(contract.ENV_ATTEMPT),
                "world_size": ctx.world_size,
                "config": to_dict(cfg),
                "model": cfg.model.kind,
            },
        )
        metrics.checkpoint_stall_seconds.observe(stall)

    train_model.train()
    while True:
        step = progress.step
        faults.at_boundary(step, settle=lambda: manager.wait(raise_errors=False))
        stop, notice, due = ctx.agree(
            [
                guard.stop_requested.is_set(),
                guard.save_requested.is_set(),
                ck.interval_seconds > 0
                and time.monotonic() - last_save_time >= ck.interval_seconds,
            ]
        )
        finished = step >= cfg.max_steps
        metric, new_best = None, False
        if cfg.eval_every and step > start_step and step % cfg.eval_every == 0:
            metric = evaluate()
            if progress.best_metric is None or metric < progress.best_metric:
                progress.best_metric, progress.best_step, new_best = metric, step, True
            if ctx.is_main:
                log.info(
                    "step %d: validation loss %.4f (best %.4f at step %s)",
                    step,
                    metric,
                    progress.best_metric,
                    progress.best_step,
                )
        every = ck.interval_steps > 0 and step > start_step and step % ck.interval_steps == 0
        if notice:
            guard.take_save_request()
            log.warning("saving at step %d: %s", step, guard.save_reason or "save requested")
        if (
            stop or notice or due or finished or every or (new_best and ck.keep_best)
        ) and step != last_saved:
            save(step, metric)
            last_saved, last_save_time = step, time.monotonic()
        if stop or finished:
            return _finish(ctx, manager, mirror, guard, cfg, step, stopped=stop)

        idx = sampler.next_indices()
        batch = to_batch(train_rows, idx).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
            loss = compute_loss(train_model, batch, cfg.model)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if o.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.samples_seen += global_batch
        progress.tokens_seen += global_batch * cfg.model.seq_len
        window_samples += global_batch

        hooks.after_step(progress.step, guard)
        faults.after_step()
        if cfg.report.log_every and progress.step % cfg.report.log_every == 0:
            now = time.monotonic()
            samples_per_second = window_samples / max(now - window_start, 1e-9)
            window_start, window_samples = now, 0
            loss_value = float(loss.detach())
            metrics.loss.set(loss_value)
            metrics.samples_per_second.set(samples_per_second)
            if ctx.is_main:
                log.info(
                    "step %d: loss %.4f, %.1f samples/s, lr %.2e",
                    progress.step,
                    loss_value,
                    samples_per_second,
                    scheduler.get_last_lr()[0],
                )
        metrics.step.set(progress.step)
        if reporter is not None:
            reporter.step(progress.step, samples_per_second)


def _finish(
    ctx: DistContext,
    manager: CheckpointManager,
    mirror: S3Mirror | None,
    guard: StopGuard,
    cfg: TrainConfig,
    step: int,
    stopped: bool,
) -> int:
    """Wait for the last save (and its upload); every rank leaves only after the commit."""
    code = contract.EXIT_STOPPED if stopped else contract.EXIT_DONE
    try:
        manager.wait()
    except CheckpointError as e:
        log.error("final checkpoint at step %d failed: %s", step, e)
        code = 1
    upload_wait = _upload_wait(cfg, guard, stopped)
    if mirror is not None and not mirror.wait(upload_wait):
        log.warning("S3 upload still running after %.0fs; leaving it", upload_wait)
    # A rank that exits before the commit would make torchrun kill the others mid-save.
    ctx.barrier()
    if stopped and ctx.is_main:
        since = time.monotonic() - guard.stop_time if guard.stop_time is not None else 0.0
        log.warning(
            "stopped at step %d (%s): checkpoint committed %.1fs after the request (grace %.0fs)",
            step,
            guard.stop_reason or "peer rank",
            since,
            cfg.preemption.grace_period_seconds,
        )
    elif ctx.is_main:
        log.info("finished %d steps", step)
    return code


def _upload_wait(cfg: TrainConfig, guard: StopGuard, stopped: bool) -> float:
    """How long a finishing run waits for S3 uploads: ``s3_upload_timeout_seconds``, and on
    a stop no longer than what the grace period leaves (minus a margin to exit cleanly)."""
    wait = cfg.checkpoint.s3_upload_timeout_seconds
    left = guard.seconds_left(cfg.preemption.grace_period_seconds) if stopped else None
    if left is not None:
        wait = max(0.0, min(wait, left - EXIT_MARGIN_SECONDS))
    return wait


def _close_mirror(mirror: S3Mirror, cfg: TrainConfig, guard: StopGuard) -> None:
    """On the way out (any way out), within the grace period when stopping."""
    mirror.close(_upload_wait(cfg, guard, guard.stop_requested.is_set()))


def _warn_if_past_grace(info: CheckpointInfo, grace: float, warned: bool) -> bool:
    """A save slower than the grace period cannot commit after a SIGTERM: warn (once; the
    returned flag says whether a warning was given, now or before)."""
    if info.seconds > grace and not warned:
        log.warning(
            "checkpoint step %d took %.1fs, longer than the %.0fs grace period: a stop "
            "would be killed before its checkpoint commits (raise "
            "terminationGracePeriodSeconds or make saves faster)",
            info.step,
            info.seconds,
            grace,
        )
        return True
    return warned
