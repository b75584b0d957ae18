"""spotrun_api: the TrainingRun's typed model and the operator <-> trainer contract.

The bottom floor of both images: it imports pydantic and the standard library only (no
kopf, no kubernetes client, no torch).
"""

from spotrun_api.enums import (
    AccessMode,
    CapacityType,
    ConditionStatus,
    ConditionType,
    ImagePullPolicy,
    Outcome,
    Phase,
    RunReason,
)

__all__ = [
    "AccessMode",
    "CapacityType",
    "ConditionStatus",
    "ConditionType",
    "ImagePullPolicy",
    "Outcome",
    "Phase",
    "RunReason",
]
