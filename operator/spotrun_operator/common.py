"""Names, labels and time helpers shared by every module (pure, no I/O)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from spotrun_trainer.contract import GROUP, KIND, PLURAL, VERSION

API_VERSION: Final = f"{GROUP}/{VERSION}"
__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION"]

# Labels on every child; selectors use them, so they must never change meaning.
LABEL_RUN: Final = "spotrun.dev/run"
LABEL_ATTEMPT: Final = "spotrun.dev/attempt"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "spotrun-operator"
# Set by the Kubeflow training operator on the pods of a PyTorchJob.
LABEL_REPLICA_TYPE: Final = "training.kubeflow.org/replica-type"

PYTORCHJOB_GROUP: Final = "kubeflow.org"
PYTORCHJOB_VERSION: Final = "v1"
PYTORCHJOB_PLURAL: Final = "pytorchjobs"
PYTORCHJOB_KIND: Final = "PyTorchJob"
# The Kubeflow training operator finds the trainer container by this name.
CONTAINER_NAME: Final = "pytorch"
CHECKPOINT_VOLUME: Final = "spotrun-checkpoints"

GPU_RESOURCE: Final = "nvidia.com/gpu"
LABEL_INSTANCE_TYPE: Final = "node.kubernetes.io/instance-type"
LABEL_ZONE: Final = "topology.kubernetes.io/zone"
LABEL_HOSTNAME: Final = "kubernetes.io/hostname"
LABEL_EKS_CAPACITY: Final = "eks.amazonaws.com/capacityType"
LABEL_KARPENTER_CAPACITY: Final = "karpenter.sh/capacity-type"
EKS_CAPACITY_VALUES: Final = {"spot": "SPOT", "on-demand": "ON_DEMAND"}

_JOB_RE: Final = re.compile(r"^(?P<run>.+)-a(?P<n>[1-9][0-9]*)$")


def job_name(run: str, attempt: int) -> str:
    """Deterministic PyTorchJob name of an attempt: every create is idempotent."""
    return f"{run}-a{attempt}"


def parse_job_name(run: str, name: str) -> int | None:
    """The attempt number of ``<run>-a<N>``; None for any other name."""
    m = _JOB_RE.match(name)
    if not m or m.group("run") != run:
        return None
    return int(m.group("n"))


def pvc_name(run: str) -> str:
    return f"{run}-checkpoints"


def trainer_sa_name(run: str) -> str:
    """ServiceAccount, Role and RoleBinding of the run's trainer share this name."""
    return f"{run}-trainer"


def run_labels(run: str) -> dict[str, str]:
    return {LABEL_RUN: run, LABEL_MANAGED_BY: MANAGER}


def attempt_labels(run: str, attempt: int) -> dict[str, str]:
    return {**run_labels(run), LABEL_ATTEMPT: str(attempt)}


# --- time -------------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime) -> str:
    """RFC 3339 with second precision, the format Kubernetes uses."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 timestamp (``Z`` or offset, optional fraction); None stays None."""
    if not s:
        return None
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


_DURATION_RE: Final = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_FULL_RE: Final = re.compile(r"^([0-9]+(ms|s|m|h))+$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(s: str) -> float:
    """Seconds in a Go-style duration (``90s``, ``15m``, ``1h30m``); ValueError otherwise.

    The CRD validates the same grammar, so a ValueError here means a spec that bypassed
    the apiserver's validation (unit tests, an older CRD)."""
    if not _DURATION_FULL_RE.match(s):
        raise ValueError(f"not a duration: {s!r} (expected e.g. 90s, 15m, 1h30m)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_RE.findall(s))
