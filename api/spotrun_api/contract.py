"""The operator <-> trainer contract: importable without torch or kopf.

The operator sets these environment variables on every rank of an attempt, reads the exit
codes the trainer leaves, and reads ``status.progress`` that the trainer patches. Both
sides import the names from here so the contract cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

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
# A rank of an older attempt found the checkpoint folder fenced by a newer attempt
# (docs/trainer.md, "Fenced checkpoints"): its commit was refused and it left without
# writing a checkpoint. Not an application error: a newer attempt owns the run's folder,
# so this rank's attempt is over. Chosen beside EXIT_PEER_LOST, clear of the same
# conventions.
EXIT_FENCED: Final = 87
# A worker rank waited for its master's store (MASTER_ADDR:MASTER_PORT, or torchrun's
# PET_MASTER_ADDR:PET_MASTER_PORT) for ENV_MASTER_WAIT_SECONDS and it never answered: the
# gang was never complete. The same word as the training operator's ``init-pytorch``
# giving up on the master's name: capacity while a pod of the gang had no node
# (IncompleteGang), an application failure when every pod had one (the master was placed
# and never listened). Beside EXIT_FENCED, clear of the same conventions.
EXIT_NO_MASTER: Final = 88

# A rank leaving with EXIT_PEER_LOST names the pod of the peer it lost (that rank's
# hostname: its pod's name) as ``lost-pod=<name>`` in its termination message, when it
# knows it. The operator takes that pod as gone: with fenced checkpoints the next attempt
# need not wait for a pod its own gang saw die (docs/operator.md, "Fenced restarts").
LOST_POD_KEY: Final = "lost-pod"
_LOST_POD_RE: Final = re.compile(rf"\b{LOST_POD_KEY}=([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?)")


def lost_pod_words(pod: str) -> str:
    """The words of a peer-lost message that name the lost peer's pod."""
    return f"{LOST_POD_KEY}={pod}"


def lost_pod_named(message: str) -> str | None:
    """The lost peer's pod a peer-lost message names, if it names one."""
    m = _LOST_POD_RE.search(message)
    return m.group(1) if m else None


# --- lost peers (docs/trainer.md, "Lost peers") ------------------------------------------
# Not set by the operator (a user's podTemplate env may set them); the trainer reads them.
# The floor of how long a peer may send no heartbeat before the survivors leave with
# EXIT_PEER_LOST; the limit is max(floor, PEER_TIMEOUT_STEP_FACTOR x the median step
# time). 0 turns the heartbeat off. 10 s is 100 missed beats of 100 ms (torchft drops a
# replica group after 5 s of silence); a silent loss is the one interruption no notice
# announces, so this floor is most of its detection.
ENV_PEER_TIMEOUT_SECONDS: Final = "SPOTRUN_PEER_TIMEOUT_SECONDS"
DEFAULT_PEER_TIMEOUT_SECONDS: Final = 10
PEER_TIMEOUT_STEP_FACTOR: Final = 10
# The process groups' timeout: the bound of every collective (and of the store's ops) while
# every peer still heartbeats, i.e. a hang of the application, not a lost peer.
ENV_COLLECTIVE_TIMEOUT_SECONDS: Final = "SPOTRUN_COLLECTIVE_TIMEOUT_SECONDS"
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS: Final = 300
# How long a worker rank waits for its master's store to accept a connection before it
# leaves with EXIT_NO_MASTER (docs/trainer.md, "Joining the gang"). A worker starts with its
# master and waits for it itself, polling every 0.1 s while its own imports are done, so it
# needs no init container waiting for the master's DNS name first. 200 s: as long as the
# training operator's own ``init-pytorch`` waits (100 tries, 2 s apart).
ENV_MASTER_WAIT_SECONDS: Final = "SPOTRUN_MASTER_WAIT_SECONDS"
DEFAULT_MASTER_WAIT_SECONDS: Final = 200
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


# --- fenced checkpoints (docs/trainer.md, "Fenced checkpoints") ----------------------------
# Every attempt is an epoch: its SPOTRUN_ATTEMPT. Rank 0 of a new attempt, before it loads
# anything, writes <dir>/fence/<E>.json (temp file, fsync, rename, fsync of the folder)
# recording its epoch and the checkpoints of older epochs it accepts: those committed
# when it wrote the fence (and themselves accepted by the fence before). Each attempt has
# a file of its own and never rewrites another's, so the fence only ever moves forward
# without a compare-and-swap: the fence is the file with the highest epoch. A rank of an
# older epoch may not commit once a newer fence exists (it leaves with EXIT_FENCED), and
# a checkpoint of an older epoch that is not in the accepted list is never loaded.
FENCE_DIR: Final = "fence"
FENCE_FORMAT_VERSION: Final = 1
# The COMMITTED manifest's key naming the epoch (attempt) that wrote the checkpoint; absent
# outside the operator (no SPOTRUN_ATTEMPT), and read as 0 (older than every attempt).
MANIFEST_EPOCH: Final = "epoch"
_FENCE_FILE_RE: Final = re.compile(r"^(\d+)\.json$")


def fence_file_name(epoch: int) -> str:
    """Name (inside ``FENCE_DIR``) of the fence written by attempt ``epoch``."""
    if epoch < 1:
        raise ValueError(f"epoch must be >= 1, got {epoch}")
    return f"{epoch}.json"


def parse_fence_file(name: str) -> int | None:
    """The epoch of a fence file name, or None for any other name (temp files)."""
    m = _FENCE_FILE_RE.match(name)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


@dataclass(frozen=True)
class AcceptedCheckpoint:
    """A checkpoint of an older epoch that a fence accepts: the folder ``step-<step>``
    whose ``COMMITTED`` manifest has this sha256 (a later copy of the same step is
    another checkpoint), written by ``epoch``."""

    step: int
    epoch: int
    manifest_sha256: str


@dataclass(frozen=True)
class Fence:
    """The content of ``fence/<epoch>.json``, a JSON object: ``format`` (1), ``epoch``
    (the attempt that wrote it), ``written_at`` (RFC 3339, UTC) and ``accepted``, a list
    of ``{"step": N, "epoch": E, "manifest_sha256": "<hex>"}``: the checkpoints of older
    epochs it accepts."""

    epoch: int
    accepted: tuple[AcceptedCheckpoint, ...] = ()
    written_at: str = ""

    def accepts(self, step: int, epoch: int, manifest_sha256: str) -> bool:
        """A checkpoint of this fence's epoch or newer, or one it accepted by name."""
        if epoch >= self.epoch:
            return True
        return any(a.step == step and a.manifest_sha256 == manifest_sha256 for a in self.accepted)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FENCE_FORMAT_VERSION,
            "epoch": self.epoch,
            "written_at": self.written_at,
            "accepted": [
                {"step": a.step, "epoch": a.epoch, "manifest_sha256": a.manifest_sha256}
                for a in self.accepted
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> Fence:
        """Parse a fence file's JSON; ValueError when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FENCE_FORMAT_VERSION:
            raise ValueError(f"not a fence of format {FENCE_FORMAT_VERSION}: {data!r:.200}")
        try:
            accepted = tuple(
                AcceptedCheckpoint(int(a["step"]), int(a["epoch"]), str(a["manifest_sha256"]))
                for a in data.get("accepted", [])
            )
            return cls(int(data["epoch"]), accepted, str(data.get("written_at", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed fence: {e}") from None
