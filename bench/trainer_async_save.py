"""Cost of sharded (DCP) checkpoints to the training loop: sync vs async thread vs async
process, each async writer with the staging copy made before the loop goes on or
overlapped with the next step (``overlap-*``: the copy runs in a staging thread and the
optimizer step waits for it), with the trainer's own CheckpointManager and FSDP2 on a
one-rank gloo group (``--device cuda``: model, optimizer and batch on the GPU, the group
NCCL with a gloo group for the checkpoints, as the trainer's ``distributed`` sets them up;
the async modes stage to pinned CPU memory).

    python bench/trainer_async_save.py                  # ~100M-parameter GPT-2 on CPU
    python bench/trainer_async_save.py --params 10M     # quick run
    python bench/trainer_async_save.py --device cuda    # on the GPU
    python bench/trainer_async_save.py --nice 0 --crc32 --buffered
                                    # the writer as it was before WriterOptions (comparison)

For each mode: the stall (time the loop is blocked: in ``save``, plus, with overlapped
staging, the wait before the next optimizer step for the copy to finish), the duration of the whole
save (to the commit), and the step time while a background save runs against the step
time of the steps just before that save, with nothing in flight (the slowdown; a peer
measured minutes apart would move with the load of a shared box). The synchronous save in
the same run is the yardstick of the stalls; the resume time is the time ``load`` takes to
read the newest checkpoint back (checksums verified, resharded by DCP).

Where the CPU goes: for every step its wall time, the CPU time of the training thread and
the time it waited for a CPU on the run queue (``/proc/thread-self/schedstat``); for every
save the CPU seconds of the writer (the trainer process's other threads, plus DCP's
checkpoint process in process mode) and the load average around each mode. On CUDA each
step ends with a device synchronisation before its timers are read. Each async mode's
checkpoints and staging buffers are released when the mode is done (a 1B checkpoint with
AdamW state is 12 GB); the sync mode's stay for the resume.
Prints a table and writes bench/results/trainer_async_save-<params>[-<tag>].json. Not a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fsdp_loop import CpuMeter, Loop, Step, init_group
from model_fields import model_fields
from trainer_stop_save import bench_stop, print_stop_table

from spotrun_lm.config import ModelConfig
from spotrun_lm.models import count_parameters
from spotrun_trainer.checkpoint import (
    CheckpointHooks,
    CheckpointManager,
    CheckpointSettings,
    RankPlace,
)
from spotrun_trainer.pacing import Hurry
from spotrun_trainer.shard_writer import WriterOptions, set_zip_crc32

REPO = Path(__file__).resolve().parents[1]

MODES = ("sync", "thread", "process", "overlap-thread", "overlap-process")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="100M", help="model size, e.g. 10M, 100M, 1B")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where it trains")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training loop")
    p.add_argument("--saves", type=int, default=2, help="saves timed per mode")
    p.add_argument(
        "--baseline-steps",
        type=int,
        default=3,
        help="steps timed just before and just after each save, nothing in flight: the baseline",
    )
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated subset of "
        + ",".join(MODES)
        + " (sync always runs: it is the yardstick)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=WriterOptions.nice,
        help="niceness of the background writer (0: the training's own)",
    )
    p.add_argument(
        "--crc32",
        action="store_true",
        help="let torch.save write CRC32s into the shards (off by default)",
    )
    p.add_argument(
        "--buffered",
        action="store_true",
        help="write shards through the page cache (default: O_DIRECT where possible)",
    )
    p.add_argument(
        "--write-mb-per-s",
        type=float,
        default=WriterOptions.max_write_mb_per_s,
        help="pace of the background writer, MB/s per shard (0: unpaced)",
    )
    p.add_argument(
        "--stop-after",
        type=float,
        default=0.0,
        help="also time a SIGTERM this many seconds into a background save, per async mode:\n"
        "unpaced, paced and hurried, paced and not hurried (trainer_stop_save.py); 0: not",
    )
    p.add_argument("--tag", default="", help="suffix of the JSON file name")
    p.add_argument("--dir", default=None, help="checkpoint scratch folder (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON output (default: bench/results/...)")
    return p.parse_args()


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _manager(
    folder: Path, mode: str, options: WriterOptions, hurry: Hurry | None = None,
    group: Any = None,
) -> CheckpointManager:  # fmt: skip
    settings = CheckpointSettings(
        keep=2,
        keep_best=False,
        async_save=mode != "sync",
        async_mode="process" if mode.endswith("process") else "thread",
        overlap_staging=mode.startswith("overlap"),
        writer=options,
    )
    m = CheckpointManager(folder, settings, place=RankPlace(process_group=group),
                          hooks=CheckpointHooks(hurry=hurry))  # fmt: skip
    m.prepare()
    return m


@dataclass
class SaveTimes:
    """What the timed saves of one mode measured, save by save (seconds unless named)."""

    stalls: list[float] = field(default_factory=list)  # in save() + wait before optimizer.step
    in_save: list[float] = field(default_factory=list)
    fence_waits: list[float] = field(default_factory=list)
    stall_cpu: list[float] = field(default_factory=list)  # training thread, in save()
    totals: list[float] = field(default_factory=list)
    writer_cpu: list[float] = field(default_factory=list)
    base: list[Step] = field(default_factory=list)
    during: list[Step] = field(default_factory=list)
    size: int = 0


def bench_mode(
    loop: Loop, folder: Path, mode: str, saves: int, baseline_steps: int, options: WriterOptions
) -> dict[str, Any]:
    m = _manager(folder, mode, options, group=loop.group)
    meter = CpuMeter()
    load_before = os.getloadavg()
    first_save = first_stall = None
    if mode != "sync":
        first_save, first_stall = _first_save(loop, m)
    times = SaveTimes()
    for _ in range(saves):
        _timed_save(loop, m, meter, baseline_steps, times)
    m.close()  # the staging buffers (pinned on CUDA): 12 GB at 1B
    return _mode_result(times, first_save, first_stall, load_before)


def _first_save(loop: Loop, m: CheckpointManager) -> tuple[float, float]:
    """(save, stall) of the first async save, timed apart: it allocates the staging buffers
    (reused by every later save) and, in process mode, starts DCP's checkpoint process."""
    t0 = time.monotonic()
    m.save(loop.progress.step, loop.shared, loop.per_rank, sharded=loop.sharded)
    m.wait_staged()  # the first copy (which allocates) as if the loop waited for it
    first_stall = m.last_stall_seconds
    m.wait()
    return time.monotonic() - t0, first_stall


def _timed_save(
    loop: Loop, m: CheckpointManager, meter: CpuMeter, baseline_steps: int, t: SaveTimes
) -> None:
    """One save with training beside it, and the baseline steps just before and after it."""
    t.base += [loop.step() for _ in range(baseline_steps)]  # the peer: same minutes, no save
    in0, ch0 = meter.read()
    c0 = time.thread_time()
    blocked = m.save(loop.progress.step, loop.shared, loop.per_rank, sharded=loop.sharded)
    t.stall_cpu.append(time.thread_time() - c0)
    fence = None
    # Keep training while the write runs, as the trainer does; with overlapped staging
    # the first step's optimizer.step waits for the copy (that wait is stall, not step).
    while m.in_flight or m.staging_in_flight:
        s = loop.step()
        if fence is None:
            fence = m.last_stall_seconds - blocked
            s = Step(s.wall - fence, s.cpu, s.wait)
        t.during.append(s)
    t.in_save.append(blocked)
    t.fence_waits.append(fence or 0.0)
    t.stalls.append(blocked + (fence or 0.0))
    info = m.wait()
    assert info is not None
    t.base += [loop.step() for _ in range(baseline_steps)]  # and just after it
    in1, ch1 = meter.read()
    # A sync save runs in the training thread: its CPU is not background CPU.
    t.writer_cpu.append((in1 - in0) + (ch1 - ch0))
    t.totals.append(info.seconds)
    t.size = info.bytes


def _mode_result(
    t: SaveTimes, first_save: float | None, first_stall: float | None,
    load_before: tuple[float, float, float],
) -> dict[str, Any]:  # fmt: skip
    b_wall = _median([s.wall for s in t.base])
    d_wall = _median([s.wall for s in t.during])
    return {
        "stall_seconds": statistics.median(t.stalls),  # in save() + wait before optimizer.step
        "stall_in_save_seconds": statistics.median(t.in_save),
        "stall_before_optimizer_step_seconds": statistics.median(t.fence_waits),
        "stall_cpu_seconds": statistics.median(t.stall_cpu),  # training thread, in save()
        "save_seconds": statistics.median(t.totals),
        "checkpoint_bytes": t.size,
        "baseline_step_seconds": b_wall,
        "baseline_step_cpu_seconds": _median([s.cpu for s in t.base]),
        "baseline_step_runqueue_wait_seconds": _median([s.wait for s in t.base]),
        "steps_during_background_save": len(t.during),
        "step_seconds_during_background_save": d_wall,
        "step_cpu_seconds_during_background_save": _median([s.cpu for s in t.during]),
        "step_runqueue_wait_seconds_during_background_save": _median([s.wait for s in t.during]),
        "step_slowdown_during_background_save": d_wall / b_wall - 1 if d_wall and b_wall else None,
        "writer_cpu_seconds_per_save": statistics.median(t.writer_cpu),
        "first_save_seconds": first_save,  # with the process start in process mode
        "first_save_stall_seconds": first_stall,  # with the staging buffers' allocation
        "all_stalls": t.stalls,
        "all_stalls_in_save": t.in_save,
        "all_waits_before_optimizer_step": t.fence_waits,
        "all_stall_cpu_seconds": t.stall_cpu,
        "all_saves": t.totals,
        "all_writer_cpu_seconds": t.writer_cpu,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def bench_resume(loop: Loop, folder: Path, options: WriterOptions) -> float:
    m = _manager(folder, "sync", options, group=loop.group)
    t0 = time.monotonic()
    info = m.load(loop.shared, loop.per_rank, sharded=loop.sharded)
    assert info is not None
    return time.monotonic() - t0


def _print_table(results: dict[str, Any], modes: list[str]) -> None:
    sync_save = results["sync"]["save_seconds"]
    print(f"{'mode':>15} {'stall s':>8} {'stall/sync':>10} {'save s':>7} {'writer cpu':>10} "
          f"{'base s':>7} {'steps':>5} {'step s':>7} {'cpu s':>6} {'wait s':>6} {'slowdown':>8} "
          f"{'load':>5}")  # fmt: skip
    for mode in modes:
        r = results[mode]
        r["stall_over_sync_save"] = r["stall_seconds"] / sync_save
        slow = r["step_slowdown_during_background_save"]
        print(f"{mode:>15} {r['stall_seconds']:8.2f} {100 * r['stall_over_sync_save']:9.1f}% "
              f"{r['save_seconds']:7.2f} {r['writer_cpu_seconds_per_save']:10.2f} "
              f"{r['baseline_step_seconds']:7.2f} {r['steps_during_background_save']:5d} "
              f"{r['step_seconds_during_background_save'] or 0:7.2f} "
              f"{r['step_cpu_seconds_during_background_save'] or 0:6.2f} "
              f"{r['step_runqueue_wait_seconds_during_background_save'] or 0:6.2f} "
              f"{'-' if slow is None else f'{100 * slow:+.0f}%':>8} "
              f"{r['load_average_before'][0]:5.2f}")  # fmt: skip
    print(f"resume (load) {results['resume_seconds']:.2f}s")


def _report(
    args: argparse.Namespace, cfg: ModelConfig, options: WriterOptions, n_params: int,
    results: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {
        "params": n_params,
        "config": {
            **model_fields(args.params, cfg),
            "batch_size": args.batch_size,
            "threads": args.threads,
            "writer_nice": options.nice,
            "zip_crc32": options.crc32,
            "direct_io": options.direct_io,
            "writer_max_mb_per_s": options.max_write_mb_per_s,
        },
        "command": "python bench/trainer_async_save.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        **({"gpu": torch.cuda.get_device_name()} if args.device == "cuda" else {}),
        "cpus": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),  # taskset
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_end": os.getloadavg(),
        **results,
    }


def _write(out: Path, report: dict[str, Any]) -> None:
    out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    # `timeout` and Ctrl-C alike leave no checkpoint folder behind (they are gigabytes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    torch.set_num_threads(args.threads)
    device, group = init_group(args.device)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="spotrun-bench-"))
    cfg = ModelConfig(kind="causal_lm", params=args.params, vocab_size=args.vocab_size,
                      seq_len=args.seq_len, dropout=0.0)  # fmt: skip
    options = WriterOptions(nice=args.nice, crc32=args.crc32, direct_io=not args.buffered,
                            max_write_mb_per_s=args.write_mb_per_s)  # fmt: skip
    # The zip CRC32 is a process-wide torch setting: set once here, as the trainer does.
    set_zip_crc32(options.crc32)
    modes = ["sync", *(m for m in args.modes.split(",") if m in MODES and m != "sync")]
    try:
        loop = Loop(cfg, args.batch_size, device, group)
        n_params = count_parameters(loop.model)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"model: {n_params / 1e6:.1f}M parameters ({cfg.n_layer} layers x {cfg.n_embd}), "
              f"{where}, {args.threads} training thread(s), "
              f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores")  # fmt: skip
        for _ in range(2):  # materialise optimizer state; first steps allocate and warm up
            loop.step()
        step_s = statistics.median(loop.step().wall for _ in range(5))
        results: dict[str, Any] = {"step_seconds": step_s}
        tag = f"-{args.tag}" if args.tag else ""
        default = REPO / "bench" / "results" / f"trainer_async_save-{args.params}{tag}.json"
        out = Path(args.out) if args.out else default
        out.parent.mkdir(parents=True, exist_ok=True)
        for mode in modes:
            results[mode] = bench_mode(loop, folder / mode, mode, args.saves,
                                       args.baseline_steps, options)  # fmt: skip
            if mode != "sync":  # its checkpoints are not read again; sync's are, by resume
                shutil.rmtree(folder / mode, ignore_errors=True)
            # Written after every mode: a run cut short (a time limit) keeps what it measured.
            _write(out, _report(args, cfg, options, n_params, {**results, "complete": False}))
        if args.stop_after > 0:
            stops = results["stop"] = {}
            for mode in modes[1:]:
                stops[mode] = bench_stop(loop, functools.partial(_manager, group=group),
                                         folder / mode, mode, options, args.stop_after)  # fmt: skip
                shutil.rmtree(folder / mode, ignore_errors=True)
                _write(out, _report(args, cfg, options, n_params, {**results, "complete": False}))
        results["resume_seconds"] = bench_resume(loop, folder / "sync", options)
        _print_table(results, modes)
        if args.stop_after > 0:
            print_stop_table(results["stop"])
        _write(out, _report(args, cfg, options, n_params, {**results, "complete": True}))
        print(f"wrote {out}")
    finally:
        dist.destroy_process_group()
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
