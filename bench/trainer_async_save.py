"""Cost of sharded (DCP) checkpoints to the training loop: sync vs async thread vs async
process, with the trainer's own CheckpointManager and FSDP2 on a one-rank gloo group.

    python bench/trainer_async_save.py                  # ~100M-parameter GPT-2 on CPU
    python bench/trainer_async_save.py --params 10M     # quick run

For each mode: the stall (time the loop is blocked by ``save``), the duration of the whole
save (to the commit), and the step time while a background save runs against the step
time without one (the slowdown). The synchronous save in the same run is the yardstick of
the stalls; the resume time is the time ``load`` takes to read the newest checkpoint back.
Prints a table and writes bench/results/trainer_async_save-<params>.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from spotrun_trainer.checkpoint import CheckpointManager
from spotrun_trainer.config import ModelConfig
from spotrun_trainer.models import build_model, compute_loss, count_parameters
from spotrun_trainer.sharded import ShardedState, apply_fsdp
from spotrun_trainer.state import RNGState, TrainProgress

REPO = Path(__file__).resolve().parents[1]

MODES = ("sync", "thread", "process")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="100M", help="model size, e.g. 10M, 100M, 1B")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training loop")
    p.add_argument("--saves", type=int, default=2, help="saves timed per mode")
    p.add_argument("--dir", default=None, help="checkpoint scratch folder (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON output (default: bench/results/...)")
    return p.parse_args()


class Loop:
    """The trainer's step on one FSDP2 rank (AdamW, grad clip), and its checkpoint parts."""

    def __init__(self, cfg: ModelConfig, batch_size: int) -> None:
        torch.manual_seed(0)
        self.cfg = cfg
        self.model = apply_fsdp(build_model(cfg))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.progress = TrainProgress()
        self.batch = torch.randint(1, cfg.vocab_size, (batch_size, cfg.seq_len))
        self.shared: dict[str, Any] = {"progress": self.progress}
        self.per_rank: dict[str, Any] = {"rng": RNGState()}
        self.sharded: dict[str, Any] = {"train": ShardedState(self.model, self.opt)}

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = compute_loss(self.model, self.batch, self.cfg)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.progress.step += 1
        return time.perf_counter() - t0


def _manager(folder: Path, mode: str) -> CheckpointManager:
    m = CheckpointManager(folder, keep=2, keep_best=False, async_save=mode != "sync",
                          async_mode="process" if mode == "process" else "thread")  # fmt: skip
    m.prepare()
    return m


def bench_mode(loop: Loop, folder: Path, mode: str, saves: int) -> dict[str, Any]:
    m = _manager(folder, mode)
    first_save = None
    if mode == "process":  # the first save starts DCP's checkpoint process: timed apart
        t0 = time.monotonic()
        m.save(loop.progress.step, loop.shared, loop.per_rank, sharded=loop.sharded)
        m.wait()
        first_save = time.monotonic() - t0
    stalls, totals, during = [], [], []
    size = 0
    for _ in range(saves):
        loop.step()
        stalls.append(m.save(loop.progress.step, loop.shared, loop.per_rank, sharded=loop.sharded))
        while m.in_flight:  # keep training while the write runs, as the trainer does
            during.append(loop.step())
        info = m.wait()
        assert info is not None
        totals.append(info.seconds)
        size = info.bytes
    return {
        "stall_seconds": statistics.median(stalls),
        "save_seconds": statistics.median(totals),
        "checkpoint_bytes": size,
        "steps_during_background_save": len(during),
        "step_seconds_during_background_save": statistics.median(during) if during else None,
        "first_save_seconds_with_process_start": first_save,
        "all_stalls": stalls,
        "all_saves": totals,
    }


def bench_resume(loop: Loop, folder: Path) -> float:
    m = _manager(folder, "sync")
    t0 = time.monotonic()
    info = m.load(loop.shared, loop.per_rank, sharded=loop.sharded)
    assert info is not None
    return time.monotonic() - t0


def _print_table(results: dict[str, Any], step_s: float) -> None:
    sync_save = results["sync"]["save_seconds"]
    print(f"{'mode':>8} {'stall s':>8} {'stall/sync':>10} {'save s':>7} {'steps':>5} "
          f"{'step s':>7} {'slowdown':>8}")  # fmt: skip
    for mode in MODES:
        r = results[mode]
        during = r["step_seconds_during_background_save"]
        r["stall_over_sync_save"] = r["stall_seconds"] / sync_save
        r["step_slowdown_during_background_save"] = during / step_s - 1 if during else None
        slow = f"{100 * (during / step_s - 1):+.0f}%" if during else "-"
        print(f"{mode:>8} {r['stall_seconds']:8.2f} {100 * r['stall_over_sync_save']:9.1f}% "
              f"{r['save_seconds']:7.2f} {r['steps_during_background_save']:5d} "
              f"{during or 0:7.2f} {slow:>8}")  # fmt: skip
    print(f"baseline step {step_s:.2f}s; resume (load) {results['resume_seconds']:.2f}s")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29581")
    dist.init_process_group("gloo", rank=0, world_size=1)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="spotrun-bench-"))
    cfg = ModelConfig(kind="causal_lm", params=args.params, vocab_size=args.vocab_size,
                      seq_len=args.seq_len, dropout=0.0)  # fmt: skip
    try:
        loop = Loop(cfg, args.batch_size)
        n_params = count_parameters(loop.model)
        print(f"model: {n_params / 1e6:.1f}M parameters ({cfg.n_layer} layers x {cfg.n_embd}), "
              f"CPU, {args.threads} training thread(s), {os.cpu_count()} cores")  # fmt: skip
        for _ in range(2):  # materialise optimizer state; first steps allocate and warm up
            loop.step()
        step_s = statistics.median(loop.step() for _ in range(5))
        results: dict[str, Any] = {"step_seconds": step_s}
        for mode in MODES:
            results[mode] = bench_mode(loop, folder / mode, mode, args.saves)
        results["resume_seconds"] = bench_resume(loop, folder / "sync")
        _print_table(results, step_s)
        report = {
            "params": n_params,
            "config": {
                "params": args.params,
                "n_layer": cfg.n_layer,
                "n_embd": cfg.n_embd,
                "vocab_size": cfg.vocab_size,
                "seq_len": cfg.seq_len,
                "batch_size": args.batch_size,
                "threads": args.threads,
            },
            "device": "cpu",
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **results,
        }
        default = REPO / "bench" / "results" / f"trainer_async_save-{args.params}.json"
        out = Path(args.out) if args.out else default
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        dist.destroy_process_group()
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
