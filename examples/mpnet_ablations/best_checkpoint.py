"""Model selection by nDCG@10 and early stopping, as a ``TrainerCallback`` whose state
travels inside spotrun's checkpoints.

- Every evaluation (``eval_strategy="steps"``) updates :class:`EvalState`: the best nDCG@10
  and its step, the evaluations since the best (the patience counter), the history. An
  evaluation also asks the Trainer to save at that step, so the state of every evaluation
  is in a committed checkpoint right after it.
- A better nDCG@10 writes the model (``SentenceTransformer.save``) to a staging folder and
  commits it with spotrun's commit protocol (:func:`spotrun_trainer.commit.commit_folder`)
  as ``<checkpoint dir>/best/step-<N>/``: moved in as ``.tmp-step-N``, every file fsync'd,
  the ``COMMITTED`` manifest (with the nDCG as ``metric``) last, then renamed. A kill at any
  moment leaves the previous best intact beside at most a ``.tmp-`` folder.
- ``on_save`` writes the state as ``eval_state.json`` into the Trainer's ``checkpoint-N``
  before spotrun's callback (listed after this one) commits that folder; a resumed run
  reads it back from the checkpoint it resumes from (:meth:`BestCheckpoint.restore`).
- An older best is deleted only once no committed checkpoint can name it: after spotrun's
  callback commits a checkpoint (:meth:`BestCheckpoint.committed`, its ``after_commit``
  hook), only the best that checkpoint names is kept; on resume, only the resumed state's
  best is kept (a best written after that checkpoint belongs to steps that are trained
  again). A stop right after a better evaluation thus leaves exactly one best.
- After ``patience`` evaluations without improvement (more than ``min_delta``) training
  stops; the stop is in the state, so a run resumed after it does not train again.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from spotrun_api import contract
from spotrun_trainer import commit
from spotrun_trainer.checkpoint_io import committed_steps, remove_dir

log = logging.getLogger(__name__)

STATE_FILE = "eval_state.json"
BEST_DIR = "best"
HF_CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class EvalState:
    """What model selection and early stopping know; saved in every checkpoint."""

    best_ndcg: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    history: list[list[float]] = field(default_factory=list)  # [step, ndcg@10], in order

    @classmethod
    def read(cls, folder: Path) -> EvalState:
        path = folder / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()


class BestCheckpoint(TrainerCallback):
    """Keeps the best model by ``metric`` in ``<checkpoint_dir>/best/`` and stops training
    after ``patience`` evaluations without improvement (0: never)."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        staging_dir: str | Path,
        *,
        patience: int,
        min_delta: float = 0.0,
        metric: str = "eval_ndcg@10",
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.best_dir = Path(checkpoint_dir) / BEST_DIR
        self.staging = Path(staging_dir) / "best-staging"
        self.patience, self.min_delta, self.metric = patience, min_delta, metric
        self.meta = dict(meta or {})
        self.state = EvalState()

    def restore(self, resumed: str | None) -> EvalState:
        """Take the state saved in the checkpoint ``resumed`` (none: a fresh one) and drop
        every best folder but the one it names."""
        if resumed is not None:
            self.state = EvalState.read(Path(resumed))
        commit.prepare(self.best_dir)
        self._prune({self.state.best_step})
        if self.state.best_step is not None and self.best_path() is None:
            log.warning("the best model of step %s is missing from %s (a damaged volume?)",
                        self.state.best_step, self.best_dir)  # fmt: skip
        return self.state

    def best_path(self) -> Path | None:
        if self.state.best_step is None:
            return None
        path = self.best_dir / contract.step_dir_name(self.state.best_step)
        return path if (path / contract.COMMIT_MARKER).is_file() else None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        **_: Any,
    ) -> TrainerControl:
        if not metrics or self.metric not in metrics:
            return control
        value, step, s = float(metrics[self.metric]), state.global_step, self.state
        s.history.append([step, value])
        if s.best_ndcg is None or value > s.best_ndcg + self.min_delta:
            s.best_ndcg, s.best_step, s.evals_since_best = value, step, 0
            if state.is_world_process_zero:
                self._commit_best(model, step, value)
        else:
            s.evals_since_best += 1
        if self.patience and s.evals_since_best >= self.patience:
            s.stopped_early = True
            control.should_training_stop = True
        control.should_save = True  # this evaluation's state into a committed checkpoint
        if state.is_world_process_zero:
            cos = metrics.get("eval_mean_cosine", float("nan"))
            print(f"eval step {step} ndcg@10 {value:.4f} mean_cos {cos:.4f} "
                  f"best {s.best_ndcg:.4f} at step "
                  f"{s.best_step} patience {s.evals_since_best}/{self.patience}"
                  + (" -> early stop" if s.stopped_early else ""), flush=True)  # fmt: skip
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(str(args.output_dir)) / f"{HF_CHECKPOINT_PREFIX}{state.global_step}"
        (folder / STATE_FILE).write_text(json.dumps(asdict(self.state)))

    def committed(self, step: int) -> None:
        """Rank 0, after checkpoint ``step`` (holding this state) is committed: it names
        one best, and no older best can be resumed into any more."""
        self._prune({self.state.best_step})

    def _commit_best(self, model: Any, step: int, value: float) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        model.save(str(self.staging))
        meta = {**self.meta, "ndcg@10": value}
        path = commit.commit_folder(self.staging, self.best_dir, step, metric=value, meta=meta)
        log.info("best model so far (ndcg@10 %.4f at step %d) committed at %s", value, step, path)

    def _prune(self, keep: set[int | None]) -> None:
        for step, path in committed_steps(self.best_dir):
            if step not in keep:
                remove_dir(path)  # renamed away first: never a half-deleted step-N
