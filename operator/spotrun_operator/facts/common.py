"""Names, labels and time helpers shared by every module (pure, no I/O)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from spotrun_api.contract import API_VERSION, GROUP, KIND, PLURAL, VERSION
from spotrun_api.durations import parse_duration

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "parse_duration"]

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
# Voluntary disruptions wait for a pod with these (spec.protectFromVoluntaryDisruption):
# Karpenter's consolidation and drift (kubernetes-sigs/karpenter pkg/apis/v1/labels.go,
# DoNotDisruptAnnotationKey) and Cluster Autoscaler's scale-down (kubernetes/autoscaler
# cluster-autoscaler/utils/drain/drain.go, PodSafeToEvictKey). Neither stops a spot
# interruption: the instance goes anyway, and spotrun stops the gang on its notice.
PROTECTING_ANNOTATIONS: Final = {
    "karpenter.sh/do-not-disrupt": "true",
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
}
# Kueue (sigs.k8s.io/kueue pkg/controller/constants/constants.go QueueLabel, JobUIDLabel):
# the LocalQueue a job asks for, and the label Kueue puts on the Workload of a job.
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_JOB_UID: Final = "kueue.x-k8s.io/job-uid"
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_VERSION: Final = "v1beta1"
WORKLOAD_PLURAL: Final = "workloads"
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


# --- pods (Kubernetes JSON, read-only) ------------------------------------------------


def pod_meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def name_of(pod: Mapping[str, Any]) -> str:
    return str(pod_meta(pod).get("name"))


def pod_uid(pod: Mapping[str, Any]) -> str:
    return str(pod_meta(pod).get("uid"))


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod is bound to; None while it is unscheduled."""
    name = (pod.get("spec") or {}).get("nodeName")
    return str(name) if name else None


def pod_warm(pod: Mapping[str, Any]) -> bool:
    """A placeholder that runs and is not being deleted: its node is there and fits, and
    its image (pulled by its containers) is on the node."""
    running = (pod.get("status") or {}).get("phase") == "Running"
    return running and not pod_meta(pod).get("deletionTimestamp")


def attempt_of(pod: Mapping[str, Any]) -> int:
    """The attempt a pod belongs to (its spotrun.dev/attempt label; 0 when unlabelled)."""
    try:
        return int((pod_meta(pod).get("labels") or {}).get(LABEL_ATTEMPT, 0))
    except ValueError:
        return 0


# --- warm spares (spec.capacity.warmSpares) ---------------------------------------------
# On the spare Deployment and its pods, next to spotrun.dev/run (so the run's pod watch
# and caches see them); never with spotrun.dev/attempt. Observation tells spare pods from
# attempt pods by this label.
LABEL_SPARE_OF: Final = "spotrun.dev/spare-of"
SPARE_PRIORITY_CLASS: Final = "spotrun-spare"


def spares_name(run: str) -> str:
    return f"{run}-spares"


def is_spare(pod: Mapping[str, Any]) -> bool:
    """A placeholder of the run: a warm spare, or a capacity request."""
    labels = pod_meta(pod).get("labels") or {}
    return LABEL_SPARE_OF in labels or LABEL_CAPACITY_FOR in labels


# --- capacity requests (decisions.capacity_requests) -------------------------------------
# The placeholders that ask an autoscaler for the nodes the next attempt lacks: the spares'
# pod under its own label, so the spares' Deployment (selector spotrun.dev/spare-of) never
# counts them as its own.
LABEL_CAPACITY_FOR: Final = "spotrun.dev/capacity-for"


def capacity_requests_name(run: str) -> str:
    return f"{run}-capacity"


def is_capacity_request(pod: Mapping[str, Any]) -> bool:
    return LABEL_CAPACITY_FOR in (pod_meta(pod).get("labels") or {})
