"""A stop that arrives while a background save is being written: how long from the SIGTERM
to the stop's checkpoint committed (the part of the grace period the checkpoint takes).

Used by ``trainer_async_save.py --stop-after S``. For an async mode, three variants in
the same run: the writer unpaced; paced, hurried by the SIGTERM (``pacing.Hurry``, raised
by the trainer's ``StopGuard``: the trainer's behaviour); paced and not hurried (the
behaviour before the hurry). Each: one warm-up save (process start, staging buffers),
then a background save, training steps for ``S`` seconds beside it, a real SIGTERM to
this process, and what the trainer does at a stop: ``CheckpointManager.save(...,
blocking=True)``, which first waits for the save in flight, then writes the stop's.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from spotrun_trainer.checkpoint import CheckpointManager
from spotrun_trainer.pacing import Hurry
from spotrun_trainer.preemption import StopGuard
from spotrun_trainer.shard_writer import WriterOptions
from spotrun_trainer.state import TrainProgress

VARIANTS = ("unpaced", "paced-hurried", "paced-not-hurried")


class Trainable(Protocol):
    progress: TrainProgress
    shared: dict[str, Any]
    per_rank: dict[str, Any]
    sharded: dict[str, Any]

    def step(self) -> object: ...


ManagerFactory = Callable[[Path, str, WriterOptions, Hurry | None], CheckpointManager]


def _save(m: CheckpointManager, loop: Trainable, blocking: bool = False) -> None:
    m.save(loop.progress.step, loop.shared, loop.per_rank, sharded=loop.sharded,
           blocking=blocking)  # fmt: skip


def bench_stop_variant(
    loop: Trainable, make: ManagerFactory, folder: Path, mode: str, options: WriterOptions,
    variant: str, stop_after: float,
) -> dict[str, Any]:  # fmt: skip
    """One variant: the seconds from the SIGTERM to the stop's checkpoint committed."""
    if variant == "unpaced":
        options = dataclasses.replace(options, max_write_mb_per_s=0.0)
    guard = StopGuard()
    m = make(folder, mode, options, guard.hurry if variant == "paced-hurried" else None)
    _save(m, loop)
    m.wait()  # warm-up: the process start and the staging buffers are not the figure
    guard.install()
    try:
        t_save = time.monotonic()
        _save(m, loop)
        loop.step()  # at least one: the stop's save is of a later step than the one in flight
        while time.monotonic() - t_save < stop_after and (m.in_flight or m.staging_in_flight):
            loop.step()
        in_flight = m.in_flight
        t_stop = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # the guard's handler raises the hurry
        if variant == "paced-not-hurried":  # as before: wait() now hurries the write too
            while m.in_flight:
                time.sleep(0.01)
        previous = m.wait(raise_errors=False)  # what save(blocking=True) does first
        t_waited = time.monotonic()
        _save(m, loop, blocking=True)
        stop = m.wait()
        t_end = time.monotonic()
    finally:
        guard.uninstall()
        m.hurry.close()
        m.close()  # its staging buffers: 1.3 GB at 100M
    assert guard.stop_requested.is_set() and stop is not None
    return {
        "in_flight_at_sigterm": in_flight,
        "seconds_into_the_save_at_sigterm": t_stop - t_save,
        "sigterm_to_stop_commit_seconds": t_end - t_stop,
        "wait_for_save_in_flight_seconds": t_waited - t_stop,
        "save_in_flight_committed": previous is not None,
        "save_in_flight_seconds": previous.seconds if previous is not None else None,
        "stop_save_seconds": stop.seconds,
        "writer_max_mb_per_s": options.max_write_mb_per_s,
    }


def bench_stop(
    loop: Trainable, make: ManagerFactory, folder: Path, mode: str, options: WriterOptions,
    stop_after: float,
) -> dict[str, Any]:  # fmt: skip
    out = {}
    for v in VARIANTS:
        out[v] = bench_stop_variant(loop, make, folder / f"stop-{v}", mode, options, v, stop_after)
        gc.collect()
    return out


def print_stop_table(stops: dict[str, dict[str, Any]]) -> None:
    print(f"{'stop during save':>17} {'variant':>18} {'MB/s':>5} {'in flight':>9} "
          f"{'wait s':>7} {'SIGTERM->commit s':>17} {'in-flight save s':>16}")  # fmt: skip
    for mode, variants in stops.items():
        for v, r in variants.items():
            flight = r["save_in_flight_seconds"]
            print(f"{mode:>17} {v:>18} {r['writer_max_mb_per_s']:5.0f} "
                  f"{'yes' if r['in_flight_at_sigterm'] else 'no':>9} "
                  f"{r['wait_for_save_in_flight_seconds']:7.2f} "
                  f"{r['sigterm_to_stop_commit_seconds']:17.2f} "
                  f"{'-' if flight is None else f'{flight:.2f}':>16}")  # fmt: skip
