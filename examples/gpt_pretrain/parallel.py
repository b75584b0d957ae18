"""Process group, FSDP2 sharding and precision for the GPT example.

Under torchrun (or a pod of a multi-node TrainingRun: ``RANK``/``WORLD_SIZE``/
``MASTER_ADDR`` set by the training operator) every process joins the default group: gloo
on CPU, NCCL for CUDA tensors (with gloo beside it for CPU ones). With more than one rank
each transformer block and then the root are ``fully_shard``-ed (FSDP2): parameters,
gradients and AdamW state are split over the ranks and gathered one block at a time.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from gpt import GPT
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from spotrun_trainer.peers import collective_timeout

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def sharded(self) -> bool:
        return self.world > 1


def init_distributed(device_arg: str) -> Dist:
    """Join the process group when launched as one of several ranks; pick the device."""
    cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" not in os.environ:
        return Dist(0, 1, device)
    # Bounded (torch's default is 30 minutes): a rank whose peer's node was reclaimed fails
    # within SPOTRUN_COLLECTIVE_TIMEOUT_SECONDS instead of billing while it waits.
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=collective_timeout(os.environ))
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def shard(model: GPT, d: Dist, dtype: str) -> nn.Module:
    """FSDP2 over every rank (one mesh dimension), block by block, then the root (embedding
    and head); bf16 computes in bf16 and reduces gradients in fp32. The parameters (fp32)
    move to the mesh's device as they are sharded."""
    if not d.sharded:
        return model.to(d.device)
    mesh = init_device_mesh(d.device.type, (d.world,))
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def autocast(model: nn.Module, d: Dist, dtype: str) -> contextlib.AbstractContextManager[None]:
    """Unsharded bf16 (one GPU): autocast; FSDP2 casts through its policy instead."""
    if dtype == "fp32" or isinstance(model, FSDPModule):
        return contextlib.nullcontext()
    return torch.autocast(d.device.type, dtype=DTYPES[dtype])


def set_gradient_sync(model: nn.Module, last_micro_step: bool) -> None:
    """Accumulating micro-steps skip FSDP's reduce-scatter; the last one reduces all."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last_micro_step)


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.sharded:
        dist.all_reduce(values)
    return values


def close(d: Dist) -> None:
    if d.sharded and dist.is_initialized():
        dist.destroy_process_group()
