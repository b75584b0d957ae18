"""The objects inside ``TrainingRun.spec`` (capacity, elasticity, checkpoint, ...).

Each carries its part of the CRD too: the CEL rules on a model's ``json_schema_extra`` and
the formats of its fields are what ``python -m spotrun_dev.crdgen`` writes into
``crds/``; the validators mirror those rules for a spec that skipped admission.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from spotrun_api.base import ApiModel, Int32, cel, crd_extra
from spotrun_api.contract import DEFAULT_CHECKPOINT_INTERVAL, MIN_CHECKPOINT_INTERVAL_SECONDS
from spotrun_api.durations import DURATION_PATTERN, parse_duration
from spotrun_api.enums import AccessMode, CapacityType

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]
DEFAULT_INSTANCE_TYPES = ("p4d.24xlarge",)
DEFAULT_WAIT_BEFORE_SHRINK = "10m"
MAX_WARM_SPARES = 16
IS_DURATION = f"self.matches('{DURATION_PATTERN}')"


class EnvVar(ApiModel):
    """A Kubernetes EnvVar (name plus value or valueFrom)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=crd_extra(
            cel(
                "!self.name.startsWith('SPOTRUN_')",
                "SPOTRUN_* variables belong to the operator/trainer contract",
                field_path=".name",
            )
        ),
    )

    name: str = Field(min_length=1, max_length=256, description="Name of the environment variable.")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Resources(ApiModel):
    requests: dict[str, Quantity] | None = Field(
        None,
        max_length=16,
        description="Minimum resources the scheduler reserves, by resource name.",
    )
    limits: dict[str, Quantity] | None = Field(
        None, max_length=16, description="Maximum resources of the container, by resource name."
    )


class Capacity(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=crd_extra(
            cel(
                "self.type == 'spot' || !has(self.onDemandFallbackAfter)",
                "onDemandFallbackAfter applies only to capacity.type spot",
                field_path=".onDemandFallbackAfter",
                reason="FieldValueForbidden",
            )
        )
    )

    type: CapacityType = Field(
        CapacityType.SPOT,
        description="Capacity type: spot (cheap, reclaimable with a 2-minute notice) or "
        "on-demand. Matched against eks.amazonaws.com/capacityType and "
        "karpenter.sh/capacity-type node labels.",
    )
    instance_types: list[
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=63,
                description="An EC2 instance type, for example p4d.24xlarge.",
            ),
        ]
    ] = Field(
        list(DEFAULT_INSTANCE_TYPES),
        min_length=1,
        max_length=20,
        description="Allowed node.kubernetes.io/instance-type values.",
    )
    on_demand_fallback_after: str | None = Field(
        None,
        max_length=32,
        description="When an attempt's pods stay unschedulable on spot this long (a duration "
        "such as 30m or 1h30m), the next attempt runs on on-demand nodes; the attempt after "
        "that tries spot again. Unset: never fall back.",
        json_schema_extra=crd_extra(
            cel(IS_DURATION, "must be a duration such as 90s, 30m or 1h30m")
        ),
    )
    warm_spares: Int32 = Field(
        0,
        ge=0,
        le=MAX_WARM_SPARES,
        description="Placeholder pods (a Deployment <run>-spares at the lowest priority, "
        "PriorityClass spotrun-spare) that each hold one whole node of the run's capacity "
        "type and instance types, with the run's image pulled, while the run is active: a "
        "preempted gang's next attempt lands at once by preempting them, and the autoscaler "
        "brings new spare nodes in the background. Costs money: each spare bills a whole "
        "node at the run's capacity price while it waits idle (status.cost.sparesUSD, "
        "counted against spec.budget.maxUSD). 0: none.",
    )

    @field_validator("on_demand_fallback_after")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


class Elasticity(ApiModel):
    min_nodes: Int32 = Field(
        ge=1,
        le=512,
        description="The fewest nodes an attempt may run with (at most nodes). An attempt "
        "whose gang stays unschedulable for waitBeforeShrink is stopped (no budget spent) "
        "and the next one runs with as many nodes as fit, never fewer than this; any later "
        "attempt asks for nodes again (see growBack).",
    )
    wait_before_shrink: str = Field(
        DEFAULT_WAIT_BEFORE_SHRINK,
        max_length=32,
        description="How long an attempt's pods may stay unschedulable (a duration such as "
        "90s or 10m) before the next attempt runs with fewer nodes; 0s shrinks at once, "
        "so that after an interruption the survivors train again without waiting for the "
        "replacement.",
        json_schema_extra=crd_extra(
            cel(IS_DURATION, "must be a duration such as 90s, 10m or 1h30m")
        ),
    )
    grow_back: bool = Field(
        True,
        description="While an attempt runs shrunk, keep one placeholder pod per missing "
        "node (the warm spares' Deployment <run>-spares, counted as spares) so that the "
        "nodes come and pull the run's image; once they all run, stop the attempt "
        "gracefully (outcome CapacityGrow, no budget spent) so that the next one runs "
        "with spec.nodes. false: a shrunk attempt runs shrunk until it ends.",
    )

    @field_validator("wait_before_shrink")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v


class Volume(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=crd_extra(
            cel(
                "has(self.claimName) != has(self.size)",
                "set exactly one of claimName (an existing PVC) or size (a new PVC)",
            ),
            cel(
                "!has(self.claimName) || (!has(self.storageClassName) && !has(self.accessMode))",
                "storageClassName and accessMode apply only to a new PVC (size)",
            ),
            cel("self == oldSelf", "checkpoint.volume is immutable (the checkpoints live there)"),
        )
    )

    claim_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="Name of an existing PersistentVolumeClaim in the run's namespace.",
    )
    size: str | None = Field(
        None,
        max_length=32,
        description="Size of a new PVC named <run>-checkpoints, for example 500Gi.",
        json_schema_extra=crd_extra(
            cel(
                "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
                "must be a positive quantity such as 500Gi",
            )
        ),
    )
    storage_class_name: str | None = Field(
        None,
        max_length=253,
        description="StorageClass of the new PVC; the cluster default when unset.",
    )
    access_mode: AccessMode | None = Field(
        None,
        description="Access mode of the new PVC; ReadWriteMany (EFS, FSx for Lustre) when "
        "unset, which multi-node runs need.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if bool(self.claim_name) == bool(self.size):
            raise ValueError("set exactly one of claimName or size")
        return self

    @property
    def effective_access_mode(self) -> AccessMode:
        return self.access_mode or AccessMode.READ_WRITE_MANY


class Checkpoint(ApiModel):
    volume: Volume = Field(
        description="The volume holding step-<N>/ checkpoint folders, mounted at path on "
        "every node. Either an existing PersistentVolumeClaim (claimName) or a new one the "
        "operator creates (size, storageClassName)."
    )
    path: str = Field(
        "/checkpoints",
        max_length=1024,
        description="Mount path of the volume in the trainer (SPOTRUN_CHECKPOINT_DIR).",
        json_schema_extra=crd_extra(cel("self.startsWith('/')", "must be an absolute path")),
    )
    interval: str = Field(
        DEFAULT_CHECKPOINT_INTERVAL,
        max_length=32,
        description="Time between periodic checkpoints (a duration of at least 1s such as 15m; "
        "SPOTRUN_CHECKPOINT_INTERVAL_SECONDS), or auto to pick it from the preemptions "
        "observed so far (Young/Daly).",
        json_schema_extra=crd_extra(
            cel(
                f"self == 'auto' || {IS_DURATION}",
                "must be auto or a duration such as 15m or 1h30m",
            ),
            cel(
                f"self == 'auto' || !{IS_DURATION} || duration(self) >= duration('1s')",
                "spec.checkpoint.interval must be at least 1s (or auto): the trainer reads an "
                "interval of 0 as no timed checkpoints at all",
            ),
        ),
    )
    keep: Int32 = Field(
        3, ge=1, le=1000, description="How many committed step-<N> folders the trainer keeps."
    )
    s3_uri: str | None = Field(
        None,
        max_length=1024,
        description="Optional s3://bucket/prefix the trainer mirrors checkpoints to.",
        json_schema_extra=crd_extra(
            cel(
                "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')",
                "must look like s3://bucket/prefix",
            )
        ),
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        """``auto`` or a duration of at least 1s (the trainer reads an interval of 0 as
        "no timed checkpoints", so shorter ones mean nothing)."""
        if v == "auto":
            return v
        if parse_duration(v) < MIN_CHECKPOINT_INTERVAL_SECONDS:
            raise ValueError(
                f"must be auto or at least {MIN_CHECKPOINT_INTERVAL_SECONDS}s, got {v!r}"
            )
        return v


class Budget(ApiModel):
    max_usd: float | None = Field(
        None,
        alias="maxUSD",
        gt=0,
        description="Estimated GPU-node spend (USD) the run may reach. A warning event at 80%; "
        "before the next checkpoint interval would overshoot it, the gang is stopped "
        "gracefully (checkpointing) and the run is Suspended with reason BudgetExceeded "
        "until the budget is raised.",
    )
