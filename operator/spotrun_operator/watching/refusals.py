"""The pods the apiserver refused the training operator, read from its ``FailedCreatePod``
events on a run's PyTorchJob (watched: ``Cache.refusals``). A refusal that judges the pod
itself is a verdict on the spec (``Observed.rejected``), as a refused child of our own is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from spotrun_operator.model.plan import Rejected

# The training operator's Warning event when the apiserver refuses a pod it creates from a
# PyTorchJob (kubeflow/training-operator v1.9.3 pkg/controller.v1/control/pod_control.go:
# FailedCreatePodReason = "FailedCreatePod"; RealPodControl.createPods records
# Eventf(job, Warning, FailedCreatePodReason, "Error creating: %v", err) on the job).
FAILED_CREATE_POD = "FailedCreatePod"
# The refusals in such a message that judge the pod itself: invalid (422), or denied by an
# admission webhook or PodSecurity. Not a full quota or a namespace going away.
_POD_REFUSAL = re.compile(
    r'(?:pods? "[^"]*" is invalid|is forbidden: violates PodSecurity|admission webhook "[^"]*" '
    r"denied the request)",
    re.IGNORECASE,  # 422s name the kind ("Pod"), 403s the resource ("pods")
)


def pod_create_refusal(events: Sequence[Mapping[str, Any]]) -> Rejected | None:
    """The newest ``FailedCreatePod`` event (of one PyTorchJob) whose message is a verdict
    on the pod, as :class:`Rejected`; None when there is none (or only transient ones)."""
    found = [
        e
        for e in events
        if e.get("reason") == FAILED_CREATE_POD and _POD_REFUSAL.search(str(e.get("message")))
    ]
    if not found:
        return None
    newest = max(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    message = str(newest.get("message") or "").removeprefix("Error creating: ")
    name = str((newest.get("involvedObject") or {}).get("name") or "")
    return Rejected("Pod", f"of PyTorchJob {name}", message)
