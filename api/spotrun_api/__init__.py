"""spotrun_api: the TrainingRun's typed model and the contract every other package reads:
the operator <-> trainer env and exit codes, the children's names and the live attempt
(``naming``), money (``money``) and the display strings.

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
