"""The CPU staging copy of an async sharded save: buffers allocated once, one per storage.

A state dict can name one tensor under two keys: a GPT's tied input and output
embeddings (``transformer.wte.weight`` and ``lm_head.weight``) share their storage. DCP's
``_create_cpu_state_dict`` gives every key a buffer of its own, so the embedding, often
the largest tensor of the model, was allocated and copied twice on every save. Here each
storage is staged once and every key that names it gets the same CPU tensor; DCP still
writes every key, so a checkpoint loads the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed._state_dict_utils import (
    CompanionMismatch,
    _copy_state_dict,
    _create_cpu_state_dict,
)
from torch.distributed.checkpoint._nested_dict import flatten_state_dict, unflatten_state_dict
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.tensor import DTensor

from spotrun_trainer.testhooks import ENV_STAGING_DELAY

AliasKey = tuple[Any, ...]


def _alias_key(value: Any) -> AliasKey | None:
    """What makes two values one tensor: the same bytes seen the same way. None for
    values that are not tensors, and for empty tensors (their addresses mean nothing)."""
    local = value.to_local() if isinstance(value, DTensor) else value
    if not isinstance(local, torch.Tensor) or local.numel() == 0:
        return None
    placements = tuple(value.placements) if isinstance(value, DTensor) else ()
    return (local.device, local.untyped_storage().data_ptr(), local.storage_offset(),
            tuple(local.shape), local.stride(), local.dtype, placements)  # fmt: skip


def canonical_keys(flat: dict[str, Any]) -> dict[str, str]:
    """Each key of a flat state dict -> the first key naming the same tensor (itself when
    it is the only one)."""
    first: dict[AliasKey, str] = {}
    out = {}
    for key, value in flat.items():
        alias = _alias_key(value)
        out[key] = key if alias is None else first.setdefault(alias, key)
    return out


class ReusedStager(AsyncStager):
    """Stages a state dict into CPU buffers allocated once and reused by every save (in
    shared memory for DCP's checkpoint process, which then gets them by handle; pinned
    on CUDA), one buffer per storage however many keys name it.

    The copy is ``Tensor.copy_``, which releases the GIL (DCP's ``DefaultStager`` copies
    with ``UntypedStorage.copy_``, which holds it: a staging thread would then block the
    training thread's Python). With ``overlap`` the copy runs in a thread of its own and
    ``stage`` returns a future: the caller must not change the state before it is done
    (the checkpoint manager waits for it right before the next ``optimizer.step``)."""

    _synchronize_after_execute = False

    def __init__(self, *, share_memory: bool, pin_memory: bool, overlap: bool) -> None:
        self.share_memory, self.pin_memory = share_memory, pin_memory
        self._buffers: dict[str, Any] | None = None  # flat: one entry per canonical key
        # Test only: hold each overlapped copy, so a test sees the fence hold the step.
        self._delay = float(os.environ.get(ENV_STAGING_DELAY) or 0) if overlap else 0.0
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-stage") if overlap else None
        )

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any] | Future[dict[str, Any]]:
        if self._executor is not None:
            return self._executor.submit(self._copy, state_dict)
        return self._copy(state_dict)

    def _copy(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self._delay:
            time.sleep(self._delay)
        flat, mapping = flatten_state_dict(state_dict)
        canonical = canonical_keys(flat)
        unique = {key: flat[key] for key in flat if canonical[key] == key}
        staged = self._copy_unique(unique)
        return unflatten_state_dict({key: staged[canonical[key]] for key in flat}, mapping)

    def _copy_unique(self, unique: dict[str, Any]) -> dict[str, Any]:
        if self._buffers is not None:
            try:
                staged: dict[str, Any] = _copy_state_dict(unique, self._buffers,
                                                          type_check=False)  # fmt: skip
                return staged
            except CompanionMismatch:  # the state's shape changed: allocate anew
                self._buffers = None
        self._buffers = _create_cpu_state_dict(
            unique, pin_memory=self.pin_memory, share_memory=self.share_memory
        )
        staged = _copy_state_dict(unique, self._buffers, type_check=False)
        return staged

    def synchronize_staging(self) -> None:
        """Nothing: the checkpoint manager waits for the staging future itself."""

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._buffers = None


class StagingFence:
    """Holds the next ``optimizer.step`` of each sharded part until an overlapped staging
    copy is done.

    The staged copy must equal the state at the save step. Forward and backward only read
    parameters and optimizer state (they write activations and gradients, which are not
    saved); the optimizer step is the first thing that writes them, so that is where the
    loop waits. ``on_wait`` gets the seconds each wait blocked (the caller's stall)."""

    def __init__(self, on_wait: Callable[[float], object]) -> None:
        self.on_wait = on_wait
        self._staging: Future[Any] | None = None  # the copy in flight
        self._hooks: list[Any] = []  # optimizer step pre-hooks waiting for it

    def hold(self, staging: Future[Any], parts: Mapping[str, Any]) -> None:
        self._staging = staging
        for part in parts.values():
            optimizer = getattr(part, "optimizer", None)
            if isinstance(optimizer, torch.optim.Optimizer):
                self._hooks.append(optimizer.register_step_pre_hook(self._hook))

    def _hook(self, *_: Any) -> None:
        self.wait()  # a step pre-hook must return None

    def wait(self) -> float:
        """Block until the copy is done (nothing when none runs); the seconds blocked. A
        failed copy is not raised here: the save fails with it."""
        staging, self._staging = self._staging, None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if staging is None:
            return 0.0
        t0 = time.monotonic()
        with contextlib.suppress(BaseException):
            staging.result()
        waited = time.monotonic() - t0
        self.on_wait(waited)
        return waited

    @property
    def in_flight(self) -> bool:
        """A copy was started and not yet waited for."""
        return self._staging is not None
