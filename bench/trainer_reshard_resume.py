"""Resume time of a sharded (FSDP2 + DCP) checkpoint at the same and at another world size.

    python bench/trainer_reshard_resume.py                    # 100M GPT-2, 4 ranks -> 2
    python bench/trainer_reshard_resume.py --params 10M --save-ranks 2 --load-ranks 4

N gloo ranks (CPU processes) build the model, shard it with ``fully_shard``, take one AdamW
step (so the optimizer state exists) and save it synchronously through the trainer's
``CheckpointManager`` (DCP shards written by every rank, the manifest by rank 0). Then,
timed: N fresh ranks load it (the same world size), and M fresh ranks load it (DCP
reshards the N shards to M). Each load is what a resuming trainer does: rank 0 picks the
newest intact step (every file's sha256 verified against the manifest), broadcasts it,
and every rank loads its part of the model and optimizer. The figure is the slowest
rank's ``load`` (from the call to the state being in place), and the whole phase from the
processes' start (imports, model build, ``fully_shard``, then the load).
Writes bench/results/trainer_reshard_resume-<params>[-<tag>].json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from model_fields import model_fields

from spotrun_lm.config import ModelConfig
from spotrun_lm.models import build_model, compute_loss, count_parameters
from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings, RankPlace
from spotrun_trainer.shard_writer import set_zip_crc32
from spotrun_trainer.sharded import ShardedState, apply_fsdp
from spotrun_trainer.state import RNGState, TrainProgress

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class DistCollectives:
    """The manager's two collectives over the default (gloo) group."""

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: T) -> T:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker(
    rank: int, world: int, port: int, cfg: ModelConfig, folder: str, phase: str, out: Any
) -> None:
    t_start = time.monotonic()
    torch.set_num_threads(1)
    set_zip_crc32(False)  # as the trainer's entry point: the manifest's sha256 covers it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = apply_fsdp(build_model(cfg))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        progress = TrainProgress()
        shared: dict[str, Any] = {"progress": progress}
        per_rank: dict[str, Any] = {"rng": RNGState()}
        sharded: dict[str, Any] = {"train": ShardedState(model, opt)}
        m = CheckpointManager(folder, CheckpointSettings(keep=1, keep_best=False),
                              place=RankPlace(rank, world, DistCollectives()))  # fmt: skip
        m.prepare()
        result: dict[str, Any] = {"rank": rank}
        if phase == "save":
            batch = torch.randint(1, cfg.vocab_size, (1, cfg.seq_len))
            compute_loss(model, batch, cfg).backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad(set_to_none=True)
            progress.step = 1
            dist.barrier()
            t0 = time.monotonic()
            m.save(1, shared, per_rank, sharded=sharded)
            result["save_seconds"] = time.monotonic() - t0
        else:
            dist.barrier()  # every rank built: time the load alone
            t0 = time.monotonic()
            info = m.load(shared, per_rank, sharded=sharded)
            assert info is not None and progress.step == 1
            result["load_seconds"] = time.monotonic() - t0
            result["bytes"] = info.bytes
            # The optimizer state is there: a step runs without initialising it anew.
            assert all(len(opt.state[p]) > 0 for p in model.parameters())
        dist.barrier()
        result["phase_seconds"] = time.monotonic() - t_start
        out.put(result)
    finally:
        dist.destroy_process_group()


def run_phase(world: int, cfg: ModelConfig, folder: Path, phase: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    t0 = time.monotonic()
    procs = [ctx.Process(target=_worker, args=(r, world, port, cfg, str(folder), phase, out))
             for r in range(world)]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=1200) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0, f"{phase} rank exited {p.exitcode}"
    wall = time.monotonic() - t0
    key = "save_seconds" if phase == "save" else "load_seconds"
    return {
        "world_size": world,
        key: max(r[key] for r in results),  # the slowest rank
        "per_rank_" + key: [r[key] for r in sorted(results, key=lambda r: r["rank"])],
        "phase_seconds_from_process_start": wall,
        **({"checkpoint_bytes": results[0]["bytes"]} if phase == "load" else {}),
    }


def main() -> None:
    # `timeout` and Ctrl-C alike leave no checkpoint folder behind (they are gigabytes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="100M")
    p.add_argument("--save-ranks", type=int, default=4)
    p.add_argument("--load-ranks", type=int, default=2)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = ModelConfig(kind="causal_lm", params=args.params, vocab_size=32000, seq_len=128,
                      dropout=0.0)  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="spotrun-reshard-"))
    try:
        load_before = os.getloadavg()
        saved = run_phase(args.save_ranks, cfg, folder, "save")
        same = run_phase(args.save_ranks, cfg, folder, "load")
        resharded = run_phase(args.load_ranks, cfg, folder, "load")
        n, m = args.save_ranks, args.load_ranks
        print(f"save on {n} ranks: {saved['save_seconds']:.2f}s")
        for label, r in ((f"{n} -> {n}", same), (f"{n} -> {m} (resharded)", resharded)):
            start = r["phase_seconds_from_process_start"]
            print(
                f"resume {label}: load {r['load_seconds']:.2f}s ({start:.1f}s from process start)"
            )
        report = {
            "params": count_parameters(build_model(cfg)),
            "config": {
                **model_fields(args.params, cfg),
                "threads_per_rank": 1,
            },
            "command": "python bench/trainer_reshard_resume.py " + " ".join(sys.argv[1:]),
            "device": "cpu",
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_before": load_before,
            "load_average_at_end": os.getloadavg(),
            "save": saved,
            "resume_same_world_size": same,
            "resume_resharded": resharded,
        }
        tag = f"-{args.tag}" if args.tag else ""
        default = REPO / "bench" / "results" / f"trainer_reshard_resume-{args.params}{tag}.json"
        out = Path(args.out) if args.out else default
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
