"""Pure builders of the exact objects and patches EKS components write.

Each function returns the body one real component sends: the AWS Node Termination
Handler's taints, Karpenter's disruption taint, the node lifecycle controller's Unknown
conditions, the kubelet's pod status after a graceful node shutdown or a container exit.
``inject`` sends them; unit tests read them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, Literal, get_args

Signal = Literal[
    "nth",
    "rebalance",
    "asg",
    "scheduled-maintenance",
    "state-change",
    "mng-rebalance",
    "karpenter",
    "karpenter-drift",
    "karpenter-drift-aborted",
    "ca-scale-down",
    "out-of-service",
    "gke-preempt",
    "aks-evict",
    "loss",
    "shutdown",
    "node-pressure",
    "critical-preemption",
]
FailReason = Literal["exit1", "oom", "imagepull"]
SIGNALS: Final[tuple[Signal, ...]] = get_args(Signal)
FAIL_REASONS: Final[tuple[FailReason, ...]] = ("exit1", "oom", "imagepull")

NTH_SPOT_ITN: Final = "aws-node-termination-handler/spot-itn"
NTH_REBALANCE: Final = "aws-node-termination-handler/rebalance-recommendation"
NTH_ASG_TERMINATION: Final = "aws-node-termination-handler/asg-lifecycle-termination"
NTH_SCHEDULED_MAINTENANCE: Final = "aws-node-termination-handler/scheduled-maintenance"
KARPENTER_DISRUPTED: Final = "karpenter.sh/disrupted"
UNREACHABLE: Final = "node.kubernetes.io/unreachable"
NOT_READY: Final = "node.kubernetes.io/not-ready"

# kubernetes/kubernetes pkg/kubelet/nodeshutdown/nodeshutdown_manager.go (nodeShutdownReason,
# nodeShutdownMessage) and pkg/kubelet/nodestatus/setters.go (the Ready message).
SHUTDOWN_MESSAGE: Final = "Pod was terminated in response to imminent node shutdown."
NODE_SHUTDOWN_MESSAGE: Final = "node is shutting down"
TERMINATION_BY_KUBELET: Final = "TerminationByKubelet"
# pkg/kubelet/eviction/helpers.go: Reason, nodeLowMessageFmt, thresholdMetMessageFmt.
EVICTED_MESSAGE: Final = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. "
)
# pkg/kubelet/preemption/preemption.go: message and the DisruptionTarget terminationMsg.
PREEMPTING_MESSAGE: Final = "Preempted in order to admit critical pod"
PREEMPTING_CONDITION_MESSAGE: Final = "Pod was preempted by Kubelet to accommodate a critical pod."

# What the kubelet reports for a pod it stopped (the ``pod_status`` change of a plan).
# Exit 143: the spotrun trainer checkpoints on SIGTERM and exits 128+15 inside its grace;
# a hard node-pressure eviction gives 2 s at most, so the container is SIGKILLed (137).
SHUTDOWN_POD_STATUS: Final[dict[str, Any]] = {
    "phase": "Failed",
    "reason": "Terminated",
    "message": SHUTDOWN_MESSAGE,
    "disruptionTarget": {"reason": TERMINATION_BY_KUBELET, "message": SHUTDOWN_MESSAGE},
    "exitCode": 143,
}
NODE_PRESSURE_POD_STATUS: Final[dict[str, Any]] = {
    "phase": "Failed",
    "reason": "Evicted",
    "message": EVICTED_MESSAGE,
    "disruptionTarget": {"reason": TERMINATION_BY_KUBELET, "message": EVICTED_MESSAGE},
    "exitCode": 137,
}
PREEMPTING_POD_STATUS: Final[dict[str, Any]] = {
    "phase": "Failed",
    "reason": "Preempting",
    "message": PREEMPTING_MESSAGE,
    "disruptionTarget": {
        "reason": TERMINATION_BY_KUBELET,
        "message": PREEMPTING_CONDITION_MESSAGE,
    },
    "exitCode": 143,
}

# Which taint each signal puts on the node first (None: the signal carries no taint).
SIGNAL_TAINT: Final[dict[Signal, str | None]] = {
    "nth": NTH_SPOT_ITN,
    "karpenter": KARPENTER_DISRUPTED,
    "karpenter-drift": KARPENTER_DISRUPTED,
    "karpenter-drift-aborted": KARPENTER_DISRUPTED,
    "rebalance": NTH_REBALANCE,
    "asg": NTH_ASG_TERMINATION,
    "scheduled-maintenance": NTH_SCHEDULED_MAINTENANCE,
    "ca-scale-down": "DeletionCandidateOfClusterAutoscaler",
    "aks-evict": "remediator.kubernetes.azure.com/unschedulable",
    "out-of-service": "node.kubernetes.io/out-of-service",
    "state-change": None,
    "mng-rebalance": None,
    "gke-preempt": None,
    "loss": None,
    "shutdown": None,
    "node-pressure": None,
    "critical-preemption": None,
}


def rfc3339(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Effect of that taint when it is not NoSchedule, and the signals whose taint has no value.
_TAINT_EFFECT: Final[dict[str, str]] = {
    "ca-scale-down": "PreferNoSchedule",
    "out-of-service": "NoExecute",
}
_NO_VALUE: Final = frozenset(
    {"karpenter", "karpenter-drift", "karpenter-drift-aborted", "aks-evict"}
)


def interruption_taint(signal: Signal, event_id: str) -> dict[str, Any] | None:
    """The first taint the component behind ``signal`` adds, or None.

    NTH stores its event id as the value, Cluster Autoscaler a unix time, the
    out-of-service taint ``nodeshutdown``; Karpenter's and AKS's taints have none."""
    key = SIGNAL_TAINT[signal]
    if key is None:
        return None
    taint: dict[str, Any] = {"key": key, "effect": _TAINT_EFFECT.get(signal, "NoSchedule")}
    if signal == "out-of-service":
        taint["value"] = "nodeshutdown"
    elif signal not in _NO_VALUE:
        taint["value"] = event_id
    return taint


def node_unknown_conditions(now: dt.datetime, last_heartbeat: str | None) -> list[dict[str, Any]]:
    """Conditions the node lifecycle controller writes when the kubelet stops reporting."""
    types = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
    stamp = rfc3339(now)
    return [
        {
            "type": t,
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastTransitionTime": stamp,
            "lastHeartbeatTime": last_heartbeat or stamp,
        }
        for t in types
    ]


def node_shutting_down_condition(now: dt.datetime) -> dict[str, Any]:
    """The Ready condition a kubelet posts while it runs a graceful node shutdown."""
    stamp = rfc3339(now)
    return {
        "type": "Ready",
        "status": "False",
        "reason": "KubeletNotReady",
        "message": NODE_SHUTDOWN_MESSAGE,
        "lastTransitionTime": stamp,
        "lastHeartbeatTime": stamp,
    }


def _started_at(container_status: dict[str, Any] | None, default: str) -> str:
    running = ((container_status or {}).get("state") or {}).get("running") or {}
    return str(running.get("startedAt") or default)


def _terminated_container(
    container: dict[str, Any],
    old: dict[str, Any] | None,
    stamp: str,
    exit_code: int,
    reason: str,
) -> dict[str, Any]:
    """One container's status once it terminated (imageID and startedAt kept)."""
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": (old or {}).get("imageID", ""),
        "ready": False,
        "started": False,
        "restartCount": 0,
        "state": {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": _started_at(old, stamp),
                "finishedAt": stamp,
            }
        },
    }


def terminated_pod_status(
    pod: dict[str, Any],
    *,
    now: dt.datetime,
    exit_code: int,
    container_reason: str,
    phase: str,
    pod_reason: str | None = None,
    pod_message: str | None = None,
    disruption_reason: str | None = None,
) -> dict[str, Any]:
    """Pod status after every container terminated, as the kubelet reports it."""
    stamp = rfc3339(now)
    old = {c.get("name"): c for c in (pod.get("status") or {}).get("containerStatuses") or []}
    statuses = [
        _terminated_container(c, old.get(c["name"]), stamp, exit_code, container_reason)
        for c in (pod.get("spec") or {}).get("containers") or []
    ]
    ended = "PodFailed" if phase == "Failed" else "PodCompleted"
    conditions: list[dict[str, Any]] = [
        {"type": t, "status": "False", "reason": ended, "lastTransitionTime": stamp}
        for t in ("Ready", "ContainersReady")
    ]
    if disruption_reason:
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption_reason,
                "message": pod_message or "",
                "lastTransitionTime": stamp,
            }
        )
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
    }
    if pod_reason:
        status["reason"] = pod_reason
    if pod_message:
        status["message"] = pod_message
    return status


def shutdown_pod_status(pod: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Graceful node shutdown: the kubelet SIGTERMs every container (the spotrun trainer
    checkpoints and exits 143) and marks the pod Failed with a DisruptionTarget."""
    return kubelet_stopped_pod_status(pod, SHUTDOWN_POD_STATUS, now)


def kubelet_stopped_pod_status(
    pod: dict[str, Any], change: dict[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """The whole pod status the kubelet posts for a ``pod_status`` change of a plan."""
    disruption = change.get("disruptionTarget") or {}
    status = terminated_pod_status(
        pod,
        now=now,
        exit_code=int(change["exitCode"]),
        container_reason="Error",
        phase=str(change["phase"]),
        pod_reason=change.get("reason"),
        pod_message=change.get("message"),
        disruption_reason=disruption.get("reason"),
    )
    for cond in status["conditions"]:
        if cond["type"] == "DisruptionTarget":
            cond["message"] = disruption.get("message", "")
    return status


def failed_pod_status(pod: dict[str, Any], reason: FailReason, now: dt.datetime) -> dict[str, Any]:
    """What the kubelet reports for an application crash, an OOM kill, or a bad image."""
    if reason == "exit1":
        return terminated_pod_status(
            pod, now=now, exit_code=1, container_reason="Error", phase="Failed"
        )
    if reason == "oom":
        return terminated_pod_status(
            pod, now=now, exit_code=137, container_reason="OOMKilled", phase="Failed"
        )
    return image_pull_pod_status(pod, now)


def image_pull_pod_status(pod: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """A container whose image cannot be pulled: the pod stays Pending, backing off."""
    stamp = rfc3339(now)
    statuses = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{c.get("image", "")}": ErrImagePull: '
                    f'failed to pull and unpack image "{c.get("image", "")}": not found',
                }
            },
        }
        for c in (pod.get("spec") or {}).get("containers") or []
    ]
    return {
        "phase": "Pending",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ContainersNotReady",
                "lastTransitionTime": stamp,
            },
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "ContainersNotReady",
                "lastTransitionTime": stamp,
            },
        ],
        "containerStatuses": statuses,
    }


def completed_pod_status(pod: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Every container exited 0."""
    return terminated_pod_status(
        pod, now=now, exit_code=0, container_reason="Completed", phase="Succeeded"
    )
