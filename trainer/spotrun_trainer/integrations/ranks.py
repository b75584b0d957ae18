"""The few collectives the integrations need, over whatever process group the framework
(accelerate, torchrun) set up; every call is a no-op in a single process.

Control traffic goes over a gloo group on CPU tensors, as in
:mod:`spotrun_trainer.distributed`, so the per-step flag exchange never syncs a GPU.
Every rank must construct :class:`Ranks` at the same point (``new_group`` is collective).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class Ranks:
    def __init__(self) -> None:
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.group: Any = None
        if self.active and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def agree(self, flags: list[bool]) -> list[bool]:
        """Element-wise OR of ``flags`` over all ranks (all_reduce MAX)."""
        if not self.active:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.group)

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        result: T = box[0]
        return result
