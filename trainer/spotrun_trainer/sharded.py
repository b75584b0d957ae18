"""FSDP2 and the sharded half of a checkpoint: torch.distributed.checkpoint (DCP).

Under FSDP every rank holds a shard of the parameters and of the optimizer state, so
every rank writes its own shards (``dcp/__<rank>_<n>.distcp``) and the coordinator writes
DCP's ``dcp/.metadata``; the checkpoint manager lists those files with their checksums in
the ``COMMITTED`` manifest like any other file, so the commit protocol does not change.
DCP loads reshard: a checkpoint written by N ranks loads on M.

Modelled on torchtitan's checkpoint manager (pytorch/torchtitan,
torchtitan/components/checkpoint.py: one Stateful wrapper over model and optimizer
through ``get_state_dict``/``set_state_dict``, a separate gloo group for async saves);
written for this trainer, not copied.
"""

from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType, async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.stateful import Stateful as DcpStateful
from torch.distributed.fsdp import fully_shard

from spotrun_trainer.checkpoint_io import file_entry
from spotrun_trainer.pacing import Hurry, WriteHurries
from spotrun_trainer.shard_writer import SIDECAR, HashingFileSystemWriter, WriterOptions
from spotrun_trainer.staging import ReusedStager
from spotrun_trainer.state import Stateful

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
DCP_METADATA = ".metadata"
ASYNC_MODES = {"thread": AsyncCheckpointerType.THREAD, "process": AsyncCheckpointerType.PROCESS}


def apply_fsdp(model: nn.Module) -> nn.Module:
    """``fully_shard`` every block of every ``nn.ModuleList`` (the transformer layers),
    then the root, which takes what is left (embeddings, tied head, norms)."""
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return model


class ShardedState:
    """Model and optimizer as one DCP Stateful: sharded (DTensor) state dicts, with keys
    free of wrapper prefixes, so they load into any world size."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state_dict["model"],
            optim_state_dict=state_dict["optim"],
            options=StateDictOptions(strict=True),
        )


class ShardedModel:
    """A model alone as one DCP Stateful (no optimizer): what an inference export or a
    best-model checkpoint holds, a third of a checkpoint with AdamW's two moments."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return dict(get_model_state_dict(self.model))

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        set_model_state_dict(self.model, state_dict, options=StateDictOptions(strict=True))


def _as_dcp(parts: dict[str, Stateful]) -> dict[str, Any]:
    for name, part in parts.items():
        if not isinstance(part, DcpStateful):
            raise TypeError(f"sharded part {name!r} has no state_dict/load_state_dict")
    return dict(parts)


class DcpSaver:
    """Starts DCP saves; keeps one stager, so the CPU copy of the state is allocated once
    and reused by every save (in shared memory for the checkpoint process: it reaches the
    process by handle, with no second copy). With ``overlap`` the staging copy of an async
    save runs in a thread of its own; ``staging`` is then the future of that copy (None
    when nothing is being staged), and the state must not change until it is done.
    ``hurry``: the node's ``pacing.Hurry``; ``hurries`` adds one per background write."""

    def __init__(self, mode: str = "thread", options: WriterOptions | None = None,
                 overlap: bool = False, hurry: Hurry | None = None) -> None:  # fmt: skip
        self.mode = mode
        self.options = options or WriterOptions()
        self.overlap = overlap
        self.hurries = WriteHurries(hurry)
        self.hurry = self.hurries.node
        self.staging: Future[None] | None = None
        self._stager: ReusedStager | None = None

    def _staging(self, kind: AsyncCheckpointerType) -> ReusedStager:
        if self._stager is None:
            self._stager = ReusedStager(
                share_memory=kind is AsyncCheckpointerType.PROCESS,
                pin_memory=torch.cuda.is_available(),
                overlap=self.overlap,
            )
        return self._stager

    def start(
        self, parts: dict[str, Stateful], folder: Path, group: Any, background: bool
    ) -> Future[Any] | None:
        """Write ``parts`` under ``folder``: synchronously (returns None), or staged to CPU
        memory (now, or with ``overlap`` in the staging thread: see ``staging``) and
        written in the background (returns the future of the write). Every rank calls it
        at the same step; ``group`` is a gloo group kept for checkpoints, so a background
        write never interleaves with training collectives."""
        state = _as_dcp(parts)
        self.staging = None
        if not background:
            writer = HashingFileSystemWriter(folder, options=self.options)
            dcp_save(state, storage_writer=writer, process_group=group)
            return None
        kind = ASYNC_MODES[self.mode]
        if kind is AsyncCheckpointerType.PROCESS and not dist.is_initialized():
            kind = AsyncCheckpointerType.THREAD  # the checkpoint process needs a process group
        where = "process" if kind is AsyncCheckpointerType.PROCESS else "thread"
        writer = HashingFileSystemWriter(folder, background=where, options=self.options,
                                         hurry=self.hurries.next_write())  # fmt: skip
        response = async_save(state, storage_writer=writer, process_group=group,
                              async_checkpointer_type=kind,
                              async_stager=self._staging(kind))  # fmt: skip
        if isinstance(response, Future):
            return response
        self.staging = response.staging_completion  # overlap: the copy is still running
        future: Future[Any] = response.upload_completion
        return future

    def close(self) -> None:
        self.hurries.close()
        if self._stager is not None:
            self._stager.close()
            self._stager = None


def rank_files(folder: Path, rank: int) -> list[Path]:
    """The files of ``folder`` (a DCP folder) that ``rank`` wrote; the metadata on rank 0."""
    mine = sorted(folder.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        mine.append(folder / DCP_METADATA)
    return mine


def rank_entries(folder: Path, rank: int) -> dict[str, dict[str, Any]]:
    """Manifest entries (sha256, bytes) of this rank's files in a DCP folder: from the
    writer's sidecars where they are, by reading the file back otherwise."""
    out: dict[str, dict[str, Any]] = {}
    for f in rank_files(folder, rank):
        sidecar = f.with_name(f.name + SIDECAR)
        try:
            entry = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            entry = None
        if entry is None or entry.get("bytes") != f.stat().st_size:
            entry = file_entry(f)
        out[f"{DCP_DIR}/{f.name}"] = entry
    return out


def load(parts: dict[str, Stateful], folder: Path, group: Any) -> None:
    """Load (and reshard to this world size) ``parts`` from a DCP folder, in place."""
    dcp_load(_as_dcp(parts), checkpoint_id=folder, process_group=group)


def read_full(folder: Path) -> dict[str, Any]:
    """The whole (unsharded) state of a DCP folder, without a process group (tools, tests)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "full.pt")
        full: dict[str, Any] = torch.load(Path(tmp) / "full.pt", weights_only=False)
    return full
