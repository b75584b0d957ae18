"""The operator <-> trainer contract: importable without torch or kopf.

The operator sets these environment variables on every rank of an attempt, reads the exit
codes the trainer leaves, and reads ``status.progress`` that the trainer patches. Both
sides import the names from here so the contract cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from spotrun_api.durations import parse_duration

# --- Kubernetes coordinates of the TrainingRun ------------------------------------------
GROUP: Final = "spotrun.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "trainingruns"
KIND: Final = "TrainingRun"
API_VERSION: Final = f"{GROUP}/{VERSION}"

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
# The prefix no user env var may use (the CRD rejects it too).
ENV_PREFIX: Final = "SPOTRUN_"

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
# The one default of spec.checkpoint.interval, and the interval in seconds an attempt gets
# when nothing better is known (``auto`` before the first preemption).
DEFAULT_CHECKPOINT_INTERVAL: Final = "15m"
DEFAULT_CHECKPOINT_INTERVAL_SECONDS: Final = int(parse_duration(DEFAULT_CHECKPOINT_INTERVAL))
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
# A peer rank of the gang stopped heartbeating (its node or process is gone): this rank left
# at once rather than wait in a collective. Not an application error: the operator reads
# it as evidence that the gang is broken (signal peer-lost). Chosen clear of every
# convention a real failure could produce: 1 (Python's uncaught exception), 2 (argparse and
# this CLI's usage errors), 64-78 (sysexits.h), 126/127 (shell: not executable / not
# found), 128+n (killed by signal n: 137 SIGKILL/OOM, 143 SIGTERM, 134 SIGABRT, 139 SIGSEGV)
# and 255 (exit(-1)).
EXIT_PEER_LOST: Final = 86

# --- lost peers (docs/trainer.md, "Lost peers") ------------------------------------------
# Not set by the operator (a user's podTemplate env may set them); the trainer reads them.
# The floor of how long a peer may send no heartbeat before the survivors leave with
# EXIT_PEER_LOST; the limit is max(floor, PEER_TIMEOUT_STEP_FACTOR x the median step
# time). 0 turns the heartbeat off.
ENV_PEER_TIMEOUT_SECONDS: Final = "SPOTRUN_PEER_TIMEOUT_SECONDS"
DEFAULT_PEER_TIMEOUT_SECONDS: Final = 30
PEER_TIMEOUT_STEP_FACTOR: Final = 10
# The process groups' timeout: the bound of every collective (and of the store's ops) while
# every peer still heartbeats, i.e. a hang of the application, not a lost peer.
ENV_COLLECTIVE_TIMEOUT_SECONDS: Final = "SPOTRUN_COLLECTIVE_TIMEOUT_SECONDS"
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS: Final = 300
# Where a rank that leaves with EXIT_PEER_LOST writes its one-line reason: the container's
# terminationMessagePath (Kubernetes' default), which the kubelet copies into the
# container status the operator reads. Outside a pod the file does not exist and nothing is
# written unless the variable names a path (tests).
ENV_TERMINATION_MESSAGE_PATH: Final = "SPOTRUN_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"

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
