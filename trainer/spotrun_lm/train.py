"""A training run: set up, resume, hand over to the step loop (loop.py), stop cleanly.

The pieces: parts.py builds what is trained and saved (DDP or FSDP2), the library's
checkpoint manager (spotrun_trainer.checkpoint) saves and loads it, loop.py takes the steps;
this module wires them to the process group, the signals, metrics, status.progress and the
S3 mirror.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack

import torch
from prometheus_client import CollectorRegistry

from spotrun_api import contract
from spotrun_lm.config import TrainConfig
from spotrun_lm.faults import FaultInjector
from spotrun_lm.loop import LoopIO, TrainLoop
from spotrun_lm.models import count_parameters
from spotrun_lm.parts import TrainParts, WarmupCosine, build_parts, wrap_for_training
from spotrun_trainer import startup_gc
from spotrun_trainer.checkpoint import (
    CheckpointError,
    CheckpointHooks,
    CheckpointInfo,
    CheckpointManager,
)
from spotrun_trainer.config import RunSettings
from spotrun_trainer.core import TrainerCore, checkpoint_settings
from spotrun_trainer.distributed import DistContext, init_distributed, shutdown
from spotrun_trainer.metrics import TrainerMetrics
from spotrun_trainer.preemption import StopGuard
from spotrun_trainer.progress import ProgressReporter
from spotrun_trainer.s3mirror import S3Mirror

__all__ = ["WarmupCosine", "run", "setup_logging"]

log = logging.getLogger("spotrun_lm")

EXIT_MARGIN_SECONDS = 2.0  # of the grace period, left for leaving the process group and exit


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
    core = TrainerCore(cfg, ctx, env, guard=guard)
    faults = FaultInjector(cfg.fault, ctx.rank, env)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    metrics = _start_metrics(cfg, ctx, stack)
    reporter = core.reporter
    if reporter is not None:
        stack.callback(reporter.close)
    ck = cfg.checkpoint
    mirror = S3Mirror(ck.s3_uri, ck.s3_endpoint_url) if ck.s3_uri and ctx.is_main else None
    if mirror is not None:
        stack.callback(_close_mirror, mirror, cfg, guard)
    hooks = CheckpointHooks(
        hurry=guard.hurry,  # a stop or notice unpaces the write in flight at once
        restore_missing=mirror.restore_latest if mirror is not None else None,
        on_commit=_commit_callback(cfg, metrics, core, mirror),
        before_commit=core.hooks.before_commit,
        after_write=faults.slow_save,
    )
    manager = CheckpointManager(ck.dir, checkpoint_settings(ck), place=core.place(), hooks=hooks)
    manager.prepare()
    # Which checkpoint (if any) is known before the model is built: a resume skips the
    # random init of the weights it loads.
    t0 = time.monotonic()
    found = manager.find()
    searched = time.monotonic() - t0
    parts = build_parts(cfg, ctx, resuming=found is not None)
    startup_gc.resume()  # every import is done (the model library's too): startup_gc.py
    last_saved = _resume(cfg, ctx, parts, manager, metrics, reporter, searched)
    wrap_for_training(parts, ctx)
    core.start_notice_poller()
    stack.callback(core.stop_notice_poller)
    io = LoopIO(manager, core, faults, metrics)
    step, stopped = TrainLoop(cfg, ctx, parts, io, last_saved).run()
    return _finish(core, manager, mirror, step, stopped=stopped)


def _start_metrics(cfg: TrainConfig, ctx: DistContext, stack: ExitStack) -> TrainerMetrics:
    metrics = TrainerMetrics(CollectorRegistry())
    port = cfg.report.metrics_port
    if port and (ctx.is_main or cfg.report.metrics_all_ranks):
        try:
            metrics.serve(port + (ctx.local_rank if cfg.report.metrics_all_ranks else 0))
            stack.callback(metrics.close)
        except OSError as e:
            log.warning("metrics endpoint off: %s", e)
    return metrics


def _commit_callback(
    cfg: TrainConfig, metrics: TrainerMetrics, core: TrainerCore, mirror: S3Mirror | None
) -> Callable[[CheckpointInfo], None]:
    """What rank 0 does after each commit (in the writer thread when saves are async)."""
    grace_warned = False
    ck = cfg.checkpoint

    def on_commit(info: CheckpointInfo) -> None:
        nonlocal grace_warned
        metrics.observe_checkpoint(info.seconds, info.bytes, time.time())
        grace_warned = _warn_if_past_grace(info, cfg.preemption.grace_period_seconds, grace_warned)
        core.report_checkpoint(info.step, info.committed_at, str(info.path))
        if mirror is not None:
            mirror.enqueue(info.path, ck.keep, ck.keep_best)
        core.hooks.announce("committed", info.step)

    return on_commit


def _resume(
    cfg: TrainConfig,
    ctx: DistContext,
    parts: TrainParts,
    manager: CheckpointManager,
    metrics: TrainerMetrics,
    reporter: ProgressReporter | None,
    searched: float,
) -> int:
    """Load the checkpoint ``manager.find`` found (in ``searched`` seconds); its step, or
    -1 when starting from scratch."""
    t0 = time.monotonic() - searched  # the logged load time: the search and the load
    loaded = manager.load(
        parts.shared, parts.per_rank, map_location=ctx.device, sharded=parts.sharded or None
    )
    log.info("model %s: %d parameters (%s); world size %d on %s", cfg.model.kind,
             count_parameters(parts.model), "fsdp" if parts.sharded else "ddp",
             ctx.world_size, ctx.device)  # fmt: skip
    if loaded is None:
        if ctx.is_main:
            log.info("no checkpoint in %s: starting from scratch", cfg.checkpoint.dir)
        return -1
    saved_ws = loaded.meta.get("world_size")
    log.info("resumed from %s (step %d, written by %s ranks) in %.2fs",
             loaded.path, loaded.step, saved_ws, time.monotonic() - t0)  # fmt: skip
    metrics.step.set(loaded.step)
    if reporter is not None:
        reporter.checkpoint(loaded.step, loaded.committed_at, str(loaded.path))
    return loaded.step


def _finish(
    core: TrainerCore, manager: CheckpointManager, mirror: S3Mirror | None, step: int, stopped: bool
) -> int:
    """Wait for the last save (and its upload); every rank leaves only after the commit."""
    ctx, cfg, guard = core.ctx, core.cfg, core.guard
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
        log.warning(
            "stopped at step %d (%s): checkpoint committed %.1fs after the request (grace %.0fs)",
            step,
            guard.stop_reason or "peer rank",
            core.seconds_since_stop(),
            cfg.preemption.grace_period_seconds,
        )
    elif ctx.is_main:
        log.info("finished %d steps", step)
    return code


def _upload_wait(cfg: RunSettings, guard: StopGuard, stopped: bool) -> float:
    """How long a finishing run waits for S3 uploads: ``s3_upload_timeout_seconds``, and on
    a stop no longer than what the grace period leaves (minus a margin to exit cleanly)."""
    wait = cfg.checkpoint.s3_upload_timeout_seconds
    left = guard.seconds_left(cfg.preemption.grace_period_seconds) if stopped else None
    if left is not None:
        wait = max(0.0, min(wait, left - EXIT_MARGIN_SECONDS))
    return wait


def _close_mirror(mirror: S3Mirror, cfg: RunSettings, guard: StopGuard) -> None:
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
