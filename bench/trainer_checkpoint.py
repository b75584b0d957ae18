"""Checkpoint cost of the spotrun trainer: loop stall of sync vs async saves, and the time
from process start to the first step when resuming.

    python bench/trainer_checkpoint.py                 # ~100M-parameter GPT-2, auto device
    python bench/trainer_checkpoint.py --params 10M    # quick run
    python bench/trainer_checkpoint.py --device cuda

Prints a table and writes bench/results/trainer_checkpoint.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from model_fields import model_fields

from spotrun_lm.config import ModelConfig
from spotrun_lm.models import build_model, compute_loss, count_parameters
from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings
from spotrun_trainer.shard_writer import set_zip_crc32
from spotrun_trainer.state import ModelState, RNGState, TrainProgress
from spotrun_trainer.testhooks import ENV_EVENTS_FILE

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="100M", help="model size, e.g. 10M, 100M")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--saves", type=int, default=3, help="saves timed per mode")
    p.add_argument("--dir", default=None, help="checkpoint scratch folder (default: a temp dir)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "trainer_checkpoint.json"))
    p.add_argument("--skip-resume", action="store_true", help="skip the subprocess timings")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Loop:
    """A minimal copy of the trainer's step on one process."""

    def __init__(self, cfg: ModelConfig, device: torch.device, batch_size: int) -> None:
        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.progress = TrainProgress()
        self.batch = torch.randint(1, cfg.vocab_size, (batch_size, cfg.seq_len), device=device)
        self.shared: dict[str, Any] = {
            "model": ModelState(self.model),
            "optimizer": self.opt,
            "progress": self.progress,
        }
        self.per_rank: dict[str, Any] = {"rng": RNGState()}

    def step(self) -> float:
        t0 = time.perf_counter()
        loss = compute_loss(self.model, self.batch, self.cfg)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.progress.step += 1
        sync(self.device)
        return time.perf_counter() - t0


def bench_mode(loop: Loop, folder: Path, async_save: bool, saves: int) -> dict[str, Any]:
    m = CheckpointManager(folder, CheckpointSettings(keep=2, async_save=async_save))
    m.prepare()
    stalls, totals, overlapped_steps = [], [], []
    size = 0
    for _ in range(saves):
        loop.step()
        stalls.append(m.save(loop.progress.step, loop.shared, loop.per_rank))
        # Async: keep training while the write runs, as the trainer does.
        while m.in_flight:
            overlapped_steps.append(loop.step())
        info = m.wait()
        assert info is not None
        totals.append(info.seconds)
        size = info.bytes
    return {
        "stall_seconds": statistics.median(stalls),
        "save_seconds": statistics.median(totals),
        "stall_over_save": statistics.median(stalls) / statistics.median(totals),
        "checkpoint_bytes": size,
        "steps_during_async_write": len(overlapped_steps),
        "step_seconds_during_async_write": (
            statistics.median(overlapped_steps) if overlapped_steps else None
        ),
        "all_stalls": stalls,
        "all_saves": totals,
    }


def time_cli(folder: Path, args: list[str], until_step: int) -> dict[str, float]:
    """Seconds from process start to 'started' (state loaded) and to the first step."""
    events = folder / f"events-{until_step}"
    env = {**os.environ, ENV_EVENTS_FILE: str(events)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotrun_lm", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marks: dict[str, float] = {}
    while proc.poll() is None or not marks.get("first_step"):
        text = events.read_text() if events.exists() else ""
        if "started" not in marks and "started 0" in text:
            marks["started"] = time.monotonic() - t0
        if f"step 0 {until_step}\n" in text:
            marks["first_step"] = time.monotonic() - t0
        if proc.poll() is not None and "first_step" not in marks:
            raise RuntimeError(f"trainer exited {proc.returncode} before step {until_step}")
        time.sleep(0.01)
    proc.wait()
    return marks


def bench_resume(
    params: str, args: argparse.Namespace, device: str, folder: Path
) -> dict[str, Any]:
    ckpt = folder / "cli"
    common = [
        "--model.params",
        params,
        "--model.vocab-size",
        str(args.vocab_size),
        "--model.seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--data.num-samples",
        "64",
        "--device",
        device,
        "--checkpoint.dir",
        str(ckpt),
        "--report.metrics-port",
        "0",
        "--checkpoint.interval-seconds",
        "0",
    ]
    fresh = time_cli(folder, [*common, "--max-steps", "1"], until_step=1)
    resumed = time_cli(folder, [*common, "--max-steps", "2"], until_step=2)
    return {
        "fresh_start_to_first_step_seconds": fresh["first_step"],
        "fresh_start_to_loop_seconds": fresh["started"],
        "resume_start_to_first_step_seconds": resumed["first_step"],
        "resume_start_to_loop_seconds": resumed["started"],
        "resume_load_overhead_seconds": resumed["started"] - fresh["started"],
    }


def bench_saves(loop: Loop, folder: Path, saves: int) -> dict[str, Any]:
    """Median step time, then sync and async saves measured against it (printed)."""
    for _ in range(2):  # materialise optimizer state; first steps allocate and warm up
        loop.step()
    step_s = statistics.median(loop.step() for _ in range(5))
    results: dict[str, Any] = {"step_seconds": step_s}
    for mode in ("sync", "async"):
        r = bench_mode(loop, folder / mode, mode == "async", saves)
        r["stall_over_step"] = r["stall_seconds"] / step_s
        during = r["step_seconds_during_async_write"]
        r["step_slowdown_during_async_write"] = during / step_s if during else None
        results[mode] = r
        print(
            f"{mode:>5}: stall {r['stall_seconds']:.2f}s per save = "
            f"{100 * r['stall_over_save']:.0f}% of the save ({r['save_seconds']:.2f}s), "
            f"{r['stall_over_step']:.2f} steps; "
            f"checkpoint {r['checkpoint_bytes'] / 1e9:.2f} GB"
        )
    during = results["async"]["step_slowdown_during_async_write"]
    print(
        f" step: {step_s:.2f}s" + (f" ({during:.2f}x while an async write runs)" if during else "")
    )
    return results


def write_report(
    args: argparse.Namespace, cfg: ModelConfig, n_params: int, device: torch.device,
    results: dict[str, Any],
) -> None:  # fmt: skip
    report = {
        "params": n_params,
        "config": {
            **model_fields(args.params, cfg),
            "batch_size": args.batch_size,
        },
        "device": str(device),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    # `timeout` and Ctrl-C alike leave no checkpoint folder behind (they are gigabytes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    # As the trainer's entry point does: the manifest's sha256 covers every byte, so
    # torch.save's CRC32 (a process-wide torch setting) is off.
    set_zip_crc32(False)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="spotrun-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig(
        kind="causal_lm",
        params=args.params,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        dropout=0.0,
    )
    try:
        loop = Loop(cfg, device, args.batch_size)
        n_params = count_parameters(loop.model)
        print(
            f"model: {n_params / 1e6:.1f}M parameters ({cfg.n_layer} layers x {cfg.n_embd}), "
            f"device {device}, batch {args.batch_size}x{args.seq_len}"
        )
        results = bench_saves(loop, folder, args.saves)
        if not args.skip_resume:
            resume = bench_resume(args.params, args, device.type, folder)
            results["resume"] = resume
            print(
                "start to first step: "
                f"fresh {resume['fresh_start_to_first_step_seconds']:.1f}s, "
                f"resumed {resume['resume_start_to_first_step_seconds']:.1f}s "
                f"(loading the checkpoint adds {resume['resume_load_overhead_seconds']:.1f}s)"
            )
        write_report(args, cfg, n_params, device, results)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
