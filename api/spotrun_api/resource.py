"""The whole ``TrainingRun`` object: the root of the CRD's openAPIV3Schema.

The operator reads ``spec`` and ``status`` on their own (:mod:`spotrun_api.spec`,
:mod:`spotrun_api.status`); this model exists so the kind's description and the object's
top-level fields come from the models too (``python -m spotrun_dev.crdgen``).
"""

from __future__ import annotations

from pydantic import Field

from spotrun_api.base import ApiModel
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import TrainingRunStatus

GROUP = "spotrun.dev"
VERSION = "v1alpha1"
KIND = "TrainingRun"
PLURAL = "trainingruns"


class ObjectMeta(ApiModel):
    # No fields and no docstring: the apiserver validates metadata itself, and the CRD
    # keeps it a bare object.
    pass


class TrainingRun(ApiModel):
    """TrainingRun runs a PyTorch training job as a gang of GPU pods on spot capacity and
    keeps it alive: on a spot interruption it stops the whole gang gracefully (every rank
    checkpoints inside the notice), tells the preemption apart from an application failure,
    and starts the next attempt from the newest checkpoint."""

    api_version: str | None = Field(
        None, description=f"APIVersion of this object ({GROUP}/{VERSION})."
    )
    kind: str | None = Field(None, description=f"Kind of this object ({KIND}).")
    metadata: ObjectMeta | None = None
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None
