"""The CPU staging copy of an async sharded save, on a GPT-2 with tied embeddings: the
trainer's ``staging.ReusedStager`` (one buffer per storage) against DCP's own per-key
staging (``_create_cpu_state_dict`` + ``_copy_state_dict``, a buffer for every key), in
the same process on the same state.

    python bench/trainer_staging.py                 # ~100M parameters, vocab 32000
    python bench/trainer_staging.py --params 10M    # quick run

For each: the bytes of CPU buffers allocated, and the median seconds of a staging copy
into buffers already allocated (the cost every save after the first pays). Prints a table
and writes bench/results/trainer_staging-<params>.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from model_fields import model_fields
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

from spotrun_lm.config import ModelConfig
from spotrun_lm.models import build_model, compute_loss, count_parameters
from spotrun_trainer.sharded import ShardedState
from spotrun_trainer.staging import ReusedStager

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="100M", help="model size, e.g. 10M, 100M")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--copies", type=int, default=5, help="timed staging copies per stager")
    p.add_argument("--out", default=None, help="JSON output (default: bench/results/...)")
    return p.parse_args()


def _bytes(tree: Any) -> int:
    """Bytes of the distinct storages in a (nested) state dict."""
    seen: dict[int, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, torch.Tensor):
            storage = node.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    walk(tree)
    return sum(seen.values())


def _median_seconds(copies: dict[str, Any], n: int) -> dict[str, float]:
    """Median seconds of each copy, taken in turns (one of each per round), so a change in
    the box's load falls on both alike."""
    times: dict[str, list[float]] = {name: [] for name in copies}
    for _ in range(n):
        for name, copy in copies.items():
            t0 = time.perf_counter()
            copy()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(kind="causal_lm", params=args.params, vocab_size=args.vocab_size,
                      seq_len=args.seq_len, dropout=0.0)  # fmt: skip
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    compute_loss(model, torch.randint(1, cfg.vocab_size, (1, cfg.seq_len)), cfg).backward()  # type: ignore[no-untyped-call]
    opt.step()  # AdamW state exists
    state = {"train": ShardedState(model, opt).state_dict()}
    size = f"{count_parameters(model) / 1e6:.1f}M parameters"
    print(f"model: {size}, state {_bytes(state) / 2**20:.0f} MiB")

    stager = ReusedStager(share_memory=False, pin_memory=False, overlap=False)
    staged = stager.stage(state)  # allocates its buffers
    buffers = _create_cpu_state_dict(state)

    def dcp_copy() -> None:
        _copy_state_dict(state, buffers, type_check=False)

    seconds = _median_seconds({"ours": lambda: stager.stage(state), "peer": dcp_copy}, args.copies)
    ours = {"buffer_bytes": _bytes(staged), "copy_seconds": seconds["ours"]}
    peer = {"buffer_bytes": _bytes(buffers), "copy_seconds": seconds["peer"]}
    stager.close()

    print(f"{'stager':<34} {'buffers MiB':>12} {'copy s (median)':>16}")
    for name, r in (("spotrun ReusedStager", ours), ("DCP per-key (peer)", peer)):
        print(f"{name:<34} {r['buffer_bytes'] / 2**20:>12.1f} {r['copy_seconds']:>16.3f}")
    saved = peer["buffer_bytes"] - ours["buffer_bytes"]
    print(f"saved: {saved / 2**20:.1f} MiB of buffers, "
          f"copy {ours['copy_seconds'] / peer['copy_seconds']:.2f}x the peer's time")  # fmt: skip
    report = {
        "config": {**model_fields(args.params, cfg), "copies": args.copies},
        "machine": {
            "cpus": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "state_bytes": _bytes(state),
        "reused_stager": ours,
        "dcp_per_key": peer,
    }
    out = (
        Path(args.out)
        if args.out
        else REPO / "bench/results" / f"trainer_staging-{args.params}.json"
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
