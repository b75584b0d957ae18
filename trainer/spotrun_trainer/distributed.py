"""Process-group set-up and the few collectives every loop needs (the built-in trainer's,
``init_distributed``, and the integrations' over a process group a framework set up:
``DistContext.of_framework``).

Control traffic (stop flags, checkpoint agreement, eval averages) runs on a gloo group
over CPU tensors: with NCCL that keeps the per-step flag exchange off the GPU stream, so
it forces no device synchronisation.

Every process group gets a bounded timeout (``SPOTRUN_COLLECTIVE_TIMEOUT_SECONDS``), and
each rank heartbeats its peers (peers.py): a dead peer ends the survivors with
``EXIT_PEER_LOST`` within seconds instead of leaving them in a collective.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from spotrun_trainer import master_wait, phases
from spotrun_trainer.peers import PeerMonitor, collective_timeout, start_monitor

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    control_group: Any = None
    checkpoint_group: Any = None  # gloo, for DCP saves (their async writes run in a thread)
    peers: PeerMonitor | None = None  # heartbeats; None when alone or turned off

    @classmethod
    def of_framework(cls, env: Mapping[str, str] = os.environ) -> DistContext:
        """The process group a framework (accelerate, torchrun, the user's script) already
        set up, alone when there is none. Control traffic goes over a gloo group of its own
        when that group is not gloo (``new_group`` is collective: every rank must call this
        at the same point). No checkpoint group (``init_distributed``'s); the heartbeat is
        started by the TrainerCore that uses the context. The ``imports`` restart phase
        ends here: the script's own set-up, its process group included, is counted there."""
        phases.CLOCK.mark("imports")
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return cls(0, 1, 0, torch.device("cpu"), None)
        backend = str(dist.get_backend())
        control = dist.new_group(backend="gloo") if backend != "gloo" else None
        local_rank = int(env.get("LOCAL_RANK", "0"))
        device = torch.device("cpu")  # of the control traffic; the framework owns the model's
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, control)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            with self.peers_checked():
                self._all_arrived()
                dist.barrier(group=self.control_group)

    def broadcast_object(self, obj: T) -> T:
        if not self.distributed:
            return obj
        box: list[Any] = [obj]
        with self.peers_checked():
            self._all_arrived()  # rank 0 may have verified or restored a checkpoint alone
            dist.broadcast_object_list(box, src=0, group=self.control_group)
        result: T = box[0]
        return result

    def _all_arrived(self) -> None:
        """Wait for every rank through the store, bounded by the peers' heartbeats rather
        than by the collective timeout (PeerMonitor.arrive)."""
        if self.peers is not None:
            self.peers.arrive()

    @contextmanager
    def peers_checked(self) -> Iterator[None]:
        """A collective inside that fails because a peer is gone ends the rank with
        EXIT_PEER_LOST (once the heartbeat confirms it); any other error goes on."""
        try:
            yield
        except RuntimeError as e:  # gloo's errors and torch's DistError are RuntimeErrors
            if self.peers is not None:
                self.peers.after_error(e)
            raise

    def observe_step(self, seconds: float) -> None:
        """A step's duration: a peer's allowed silence grows with the median step."""
        if self.peers is not None:
            self.peers.observe_step(seconds)

    def agree(self, flags: Sequence[bool]) -> list[bool]:
        """Element-wise OR of ``flags`` over all ranks (all_reduce MAX)."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group)
        return [bool(v) for v in t.tolist()]

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.control_group)
        return float(t.item()) / self.world_size


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str, env: Mapping[str, str] = os.environ) -> DistContext:
    """Join the process group torchrun (or the PyTorchJob env) describes; none when alone.
    The ``imports`` restart phase ends as this starts, ``process_group`` as it returns."""
    phases.CLOCK.mark("imports")
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size <= 1:
        phases.CLOCK.mark("process_group")
        return DistContext(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Bounded (torch's default is 30 minutes): a collective that hangs while every peer
    # still heartbeats is the application's. new_group does not inherit it: pass it on.
    timeout = collective_timeout(env)
    master = master_wait.rank_store(env)
    if master is not None:  # a worker: its master may still be starting (master_wait.py)
        master_wait.wait_for_master(master, env)
    device_id = device if device.type == "cuda" else None
    dist.init_process_group(backend=backend, device_id=device_id, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    checkpoints = dist.new_group(backend="gloo", timeout=timeout)
    ctx = DistContext(rank, world_size, local_rank, device, backend, control, checkpoints)
    ctx.peers = start_monitor(rank, world_size, env)
    phases.CLOCK.mark("process_group")
    return ctx


# How long a rank waits for its process group's teardown before it leaves it behind.
DESTROY_TIMEOUT_SECONDS = 10.0
# Set when a teardown was left behind: the process then ends with os._exit (__main__), as
# interpreter finalization could block on the same process group.
TEARDOWN_BLOCKED = threading.Event()


def shutdown(ctx: DistContext, timeout: float = DESTROY_TIMEOUT_SECONDS) -> bool:
    """Tear the process group down, waiting ``timeout`` at most; False when it did not
    finish. Every checkpoint is committed and every exit code decided by now. A teardown
    that blocks (a peer's TCPStore already gone) would hold the rank until the kubelet's
    SIGKILL (exit 137 instead of 143), so it runs in a daemon thread that the process
    may leave behind."""
    if ctx.peers is not None:
        # Called from a ``finally``: an exception on its way out means this rank fails, and
        # its peers must see it go silent (they leave with EXIT_PEER_LOST, it with its error).
        ctx.peers.stop(clean=sys.exc_info()[0] is None)
    if not (ctx.distributed and dist.is_initialized()):
        return True
    done = threading.Thread(target=dist.destroy_process_group, name="pg-destroy", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning("process group teardown still blocked after %.0fs; exiting without it", timeout)
        TEARDOWN_BLOCKED.set()
        return False
    return True
