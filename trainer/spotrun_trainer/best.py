"""The best checkpoint by a validation metric, kept apart from the rolling ``step-N`` ones.

Rolling checkpoints exist to resume: the newest ``keep`` of them are kept and the rest
pruned. The checkpoint with the lowest validation loss is what a run is *for*, and it may
be far older than anything ``keep`` spares. :class:`BestCheckpoint` writes it to a folder
of its own, ``<dir>/best/step-N``, through a second :class:`CheckpointManager`, so it is
committed exactly like the rolling ones (files written into ``.tmp-step-N``, the
``COMMITTED`` manifest last, an atomic rename) and pruned to one only after a better one is
committed: at every moment ``best/`` holds a complete checkpoint (once there was one), and
the rolling retention never sees it. The metric is recorded in the manifest.

Which metric is best so far is itself state: the tracker is a Stateful part the caller
saves with the rolling checkpoints, so a resumed run compares against the best of the
run it continues.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spotrun_api import contract
from spotrun_trainer.checkpoint import CheckpointManager, CheckpointSettings, RankPlace
from spotrun_trainer.state import Stateful

__all__ = ["BEST_DIR", "BestCheckpoint"]

log = logging.getLogger(__name__)

BEST_DIR = "best"


class BestCheckpoint:
    """The lowest-metric checkpoint in ``directory`` (``<checkpoint dir>/best``).

    ``offer`` is collective: every rank calls it at the same step (the metric rank 0 passes
    decides for all). Saves are synchronous, whatever the rolling checkpoints do: a better
    model is rare and must not be lost to a stop that follows it."""

    def __init__(
        self, directory: str | Path, settings: CheckpointSettings, place: RankPlace
    ) -> None:
        self.directory = Path(directory)
        only_one = dataclasses.replace(settings, keep=1, keep_best=False, async_save=False)
        self.manager = CheckpointManager(self.directory, only_one, place=place)
        self.metric: float | None = None
        self.step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        metric, step = state_dict["metric"], state_dict["step"]
        self.metric = None if metric is None else float(metric)
        self.step = None if step is None else int(step)

    def prepare(self) -> None:
        """Create the folder, drop what an interrupted save left; collective."""
        self.manager.prepare()

    def improves(self, metric: float) -> bool:
        return math.isfinite(metric) and (self.metric is None or metric < self.metric)

    def offer(
        self,
        step: int,
        metric: float,
        *,
        shared: Mapping[str, Stateful] | None = None,
        sharded: Mapping[str, Stateful] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """Save ``shared`` (rank 0, ``torch.save``) and ``sharded`` (every rank, DCP) as the
        best checkpoint when ``metric`` beats the best so far; True when it did."""
        collectives = self.manager.collectives
        metric = collectives.broadcast_object(float(metric))
        if not self.improves(metric):
            return False
        self.metric, self.step = metric, step
        folder = self.directory / contract.step_dir_name(step)
        # A run resumed from an older rolling checkpoint replays the steps after it and
        # reaches the same metric at the same step: that best is already committed.
        done = (folder / contract.COMMIT_MARKER).is_file() if self.manager.rank == 0 else None
        if collectives.broadcast_object(done):
            return True
        self.manager.save(
            step, shared or {}, {}, metric=metric, meta=meta, sharded=sharded, blocking=True
        )
        if self.manager.wait() is not None:  # rank 0, once committed
            log.info("best checkpoint: step %d, metric %.6g", step, metric)
        return True
