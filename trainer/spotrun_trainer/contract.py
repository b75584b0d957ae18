"""The operator <-> trainer contract: one module, importable without torch or kopf.

The operator sets these environment variables on every rank of an attempt, reads the exit
codes the trainer leaves, and reads ``status.progress`` that the trainer patches. Both
sides import the names from here so the contract cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# --- environment variables set by the operator on every trainer container -------------
ENV_RUN: Final = "SPOTRUN_RUN"  # TrainingRun name
ENV_NAMESPACE: Final = "SPOTRUN_NAMESPACE"  # TrainingRun namespace
ENV_ATTEMPT: Final = "SPOTRUN_ATTEMPT"  # 1-based attempt number
ENV_CHECKPOINT_DIR: Final = "SPOTRUN_CHECKPOINT_DIR"  # mount path of the run's volume
ENV_CHECKPOINT_INTERVAL_SECONDS: Final = "SPOTRUN_CHECKPOINT_INTERVAL_SECONDS"
ENV_CHECKPOINT_KEEP: Final = "SPOTRUN_CHECKPOINT_KEEP"  # how many step folders to keep
ENV_S3_URI: Final = "SPOTRUN_S3_URI"  # optional s3://bucket/prefix mirror
ENV_METRICS_PORT: Final = "SPOTRUN_METRICS_PORT"  # trainer /metrics port; 0 = off
# The pod's terminationGracePeriodSeconds: SIGTERM -> SIGKILL, what a stop's save must fit.
ENV_TERMINATION_GRACE_SECONDS: Final = "SPOTRUN_TERMINATION_GRACE_SECONDS"
# Ranks each pod starts (spec.procsPerNode; default one per GPU): launcher mode's nproc.
ENV_PROCS_PER_NODE: Final = "SPOTRUN_PROCS_PER_NODE"

ALL_ENV: Final = (
    ENV_RUN,
    ENV_NAMESPACE,
    ENV_ATTEMPT,
    ENV_CHECKPOINT_DIR,
    ENV_CHECKPOINT_INTERVAL_SECONDS,
    ENV_CHECKPOINT_KEEP,
    ENV_S3_URI,
    ENV_METRICS_PORT,
    ENV_TERMINATION_GRACE_SECONDS,
    ENV_PROCS_PER_NODE,
)

DEFAULT_METRICS_PORT: Final = 9400
# The one default of the grace period, for the CRD's spec.terminationGracePeriodSeconds,
# the operator and the trainer: 110 s fits inside AWS's 2-minute spot interruption notice.
DEFAULT_TERMINATION_GRACE_SECONDS: Final = 110
# The shortest checkpoint interval either side accepts. The trainer reads an interval of 0
# as "no timed checkpoints", so anything shorter than this is rejected at admission.
MIN_CHECKPOINT_INTERVAL_SECONDS: Final = 1


def attempt_from_env(env: Mapping[str, str]) -> int | None:
    """``SPOTRUN_ATTEMPT`` as an int; None when unset or not a positive integer."""
    raw = env.get(ENV_ATTEMPT, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


# --- exit codes ---------------------------------------------------------------------------
EXIT_DONE: Final = 0  # training finished
EXIT_STOPPED: Final = 143  # 128 + SIGTERM: stopped on request after a committed checkpoint

# --- checkpoint layout on the run's volume ------------------------------------------------
# <dir>/step-<N>/...files...  and  <dir>/step-<N>/COMMITTED written (and fsync'd) last.
STEP_DIR_PREFIX: Final = "step-"
COMMIT_MARKER: Final = "COMMITTED"
_STEP_DIR_RE: Final = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint taken after ``step`` optimizer steps."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{STEP_DIR_PREFIX}{step}"


def parse_step_dir(name: str) -> int | None:
    """The step of a ``step-<N>`` folder name, or None for any other name."""
    m = _STEP_DIR_RE.match(name)
    return int(m.group(1)) if m else None


# --- status.progress, written by the trainer (rank 0) ---------------------------------
PROGRESS_FIELDS: Final = (
    "step",  # int: optimizer steps done
    "checkpointStep",  # int: step of the newest committed checkpoint
    "checkpointTime",  # RFC 3339 UTC time that checkpoint was committed
    "checkpointPath",  # path of that checkpoint folder on the volume
    "samplesPerSecond",  # float: recent training throughput, whole gang
    "attempt",  # int: SPOTRUN_ATTEMPT of the writer, so stale writers are recognisable
)
# Fields that describe the writing attempt only. status.progress is merge-patched, so an
# absent key keeps the previous attempt's value: a patch sends these as null until the
# current attempt has its own value (checkpoint fields describe the volume and carry over).
PER_ATTEMPT_PROGRESS_FIELDS: Final = ("samplesPerSecond", "attempt")


@dataclass(frozen=True)
class Progress:
    """``status.progress`` of a TrainingRun: what the trainer reports."""

    step: int
    checkpoint_step: int | None = None
    checkpoint_time: str | None = None
    checkpoint_path: str | None = None
    samples_per_second: float | None = None
    attempt: int | None = None

    def to_status(self) -> dict[str, Any]:
        """The JSON object patched under ``status.progress`` (None fields omitted)."""
        raw = {
            "step": self.step,
            "checkpointStep": self.checkpoint_step,
            "checkpointTime": self.checkpoint_time,
            "checkpointPath": self.checkpoint_path,
            "samplesPerSecond": self.samples_per_second,
            "attempt": self.attempt,
        }
        return {k: v for k, v in raw.items() if v is not None}

    def to_patch(self) -> dict[str, Any]:
        """``to_status()`` plus an explicit null for every per-attempt field not known yet,
        so a JSON merge patch clears what an earlier attempt wrote there."""
        out: dict[str, Any] = dict.fromkeys(PER_ATTEMPT_PROGRESS_FIELDS)
        out.update(self.to_status())
        return out

    @classmethod
    def from_status(cls, obj: dict[str, Any] | None) -> Progress | None:
        """Parse ``status.progress``; None when absent."""
        if not obj:
            return None
        sps = obj.get("samplesPerSecond")
        return cls(
            step=int(obj.get("step", 0)),
            checkpoint_step=_opt_int(obj.get("checkpointStep")),
            checkpoint_time=obj.get("checkpointTime"),
            checkpoint_path=obj.get("checkpointPath"),
            samples_per_second=float(sps) if sps is not None else None,
            attempt=_opt_int(obj.get("attempt")),
        )


def _opt_int(v: Any) -> int | None:
    return int(v) if v is not None else None


# --- Kubernetes coordinates of the TrainingRun ------------------------------------------
GROUP: Final = "spotrun.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "trainingruns"
KIND: Final = "TrainingRun"
