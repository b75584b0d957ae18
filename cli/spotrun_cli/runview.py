"""What a TrainingRun looks like to TorchX: state, restarts, replicas (pure).

TorchX's state machine already knows preemption: "if the scheduler supports preemption,
the app moves from RUNNING to PENDING" (torchx/specs/api.py ``AppState``), so a
Recovering run is PENDING and each new attempt is a restart. ``torchx cancel`` suspends the
run gracefully (every rank checkpoints) and marks it cancelled; once the operator reports
it Suspended, TorchX sees CANCELLED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from torchx.specs import AppState

from spotrun_api import naming
from spotrun_cli.translate import ANN_CANCELLED

PHASE_STATES: Final = {
    "Pending": AppState.PENDING,
    "Running": AppState.RUNNING,
    "Recovering": AppState.PENDING,
    "Suspended": AppState.PENDING,
    "Succeeded": AppState.SUCCEEDED,
    "Failed": AppState.FAILED,
}
POD_STATES: Final = {
    "Pending": AppState.PENDING,
    "Running": AppState.RUNNING,
    "Succeeded": AppState.SUCCEEDED,
    "Failed": AppState.FAILED,
}
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
REPLICA_LABEL: Final = "training.kubeflow.org/replica-type"
INDEX_LABEL: Final = "training.kubeflow.org/replica-index"
JOB_LABEL: Final = "training.kubeflow.org/job-name"


def cancelled(run: Mapping[str, Any]) -> bool:
    ann = (run.get("metadata") or {}).get("annotations") or {}
    return ANN_CANCELLED in ann


def app_state(run: Mapping[str, Any]) -> AppState:
    status = run.get("status") or {}
    phase = status.get("phase")
    if phase is None:
        return AppState.SUBMITTED
    if phase == "Suspended" and cancelled(run):
        return AppState.CANCELLED
    return PHASE_STATES.get(str(phase), AppState.UNKNOWN)


def message(run: Mapping[str, Any]) -> str:
    status = run.get("status") or {}
    msg = str(status.get("message") or "")
    phase = status.get("phase")
    if cancelled(run) and phase not in TERMINAL_PHASES and phase != "Suspended":
        return f"cancelling: stopping the gang gracefully (checkpointing). {msg}".strip()
    return msg


def restarts(run: Mapping[str, Any]) -> int:
    return max(0, int((run.get("status") or {}).get("attempt") or 0) - 1)


def live_attempt(run: Mapping[str, Any]) -> int:
    """Number of the current attempt (0: none created yet), from the run's JSON."""
    return naming.live_attempt(int((run.get("status") or {}).get("attempt") or 0))


def replica_index(pod: Mapping[str, Any]) -> int | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    kind, index = labels.get(REPLICA_LABEL), labels.get(INDEX_LABEL)
    if kind is None or index is None or not str(index).isdigit():
        return None
    return 0 if kind == "master" else int(index) + 1


def replicas(pods: Sequence[Mapping[str, Any]], nodes: int) -> list[tuple[int, AppState, str]]:
    """(replica, state, hostname) of each node of the live attempt; a node without a pod yet
    is PENDING."""
    seen: dict[int, tuple[AppState, str]] = {}
    for pod in pods:
        k = replica_index(pod)
        if k is None:
            continue
        phase = str((pod.get("status") or {}).get("phase") or "Pending")
        deleting = (pod.get("metadata") or {}).get("deletionTimestamp") is not None
        state = AppState.PENDING if deleting else POD_STATES.get(phase, AppState.UNKNOWN)
        seen[k] = (state, str((pod.get("metadata") or {}).get("name", "")))
    return [(k, *seen.get(k, (AppState.PENDING, ""))) for k in range(nodes)]
