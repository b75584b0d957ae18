"""One rank of the trainer's training loop for the checkpoint benchmarks: FSDP2 on a one-rank
process group set up as the trainer's ``distributed`` does, each step timed (wall, the
training thread's CPU, its wait on the run queue), and the CPU of everything beside the
training thread (the background writer). Used by ``trainer_async_save.py``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
import torch
import torch.distributed as dist

from spotrun_lm.config import ModelConfig
from spotrun_lm.models import build_model, compute_loss
from spotrun_trainer.sharded import ShardedState, apply_fsdp
from spotrun_trainer.state import RNGState, TrainProgress


class Loop:
    """The trainer's step on one FSDP2 rank (AdamW, grad clip), and its checkpoint parts.
    ``group``: DCP's process group (None: the default group)."""

    def __init__(
        self, cfg: ModelConfig, batch_size: int, device: torch.device, group: Any = None
    ) -> None:
        torch.manual_seed(0)
        self.cfg, self.device, self.group = cfg, device, group
        self.model = apply_fsdp(build_model(cfg).to(device))  # as parts.build_parts does
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.progress = TrainProgress()
        self.batch = torch.randint(1, cfg.vocab_size, (batch_size, cfg.seq_len), device=device)
        self.shared: dict[str, Any] = {"progress": self.progress}
        self.per_rank: dict[str, Any] = {"rng": RNGState()}
        self.sharded: dict[str, Any] = {"train": ShardedState(self.model, self.opt)}

    def step(self) -> Step:
        t0, c0, q0 = time.perf_counter(), time.thread_time(), _runqueue_wait()
        loss = compute_loss(self.model, self.batch, self.cfg)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels are done, not queued
        self.progress.step += 1
        return Step(time.perf_counter() - t0, time.thread_time() - c0, _runqueue_wait() - q0)


@dataclass(frozen=True)
class Step:
    wall: float  # seconds
    cpu: float  # CPU seconds of the training thread
    wait: float  # seconds the training thread was runnable but waited for a CPU


def _runqueue_wait() -> float:
    """Seconds this thread has spent runnable, waiting for a CPU (Linux schedstat)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU seconds of everything but the training thread: the trainer process's other
    threads (DCP's writer thread, the commit thread) and its children (DCP's checkpoint
    process, which is started by the first process-mode save)."""

    def __init__(self) -> None:
        self.me = psutil.Process()

    def _children(self) -> float:
        total = 0.0
        for c in self.me.children(recursive=True):
            try:
                t = c.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def read(self) -> tuple[float, float]:
        """(background CPU seconds in this process, CPU seconds of the children)."""
        return time.process_time() - time.thread_time(), self._children()


def init_group(device: str) -> tuple[torch.device, Any]:
    """A one-rank process group as ``spotrun_trainer.distributed`` sets one up for a rank:
    on CUDA NCCL bound to the GPU, with a gloo group for DCP (the checkpoints' group);
    on CPU gloo alone. Returns the device and DCP's group (None: the default group)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29581")
    if device == "cpu":
        dist.init_process_group("gloo", rank=0, world_size=1)
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=dev)
    return dev, dist.new_group(backend="gloo")
