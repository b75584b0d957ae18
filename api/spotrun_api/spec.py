"""``TrainingRun.spec``: the typed model, with every default in exactly one place.

Descriptions are the CRD's text (``kubectl explain``); ``tests/unit/spotrun_api`` proves the
model's JSON schema and the CRD's openAPIV3Schema equal field for field. Validation
mirrors the CRD's schema and the CEL rules the operator relies on, so a spec that skipped
admission (an older CRD, a unit test) is rejected here the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spotrun_api.base import ApiModel
from spotrun_api.contract import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_TERMINATION_GRACE_SECONDS,
    MIN_CHECKPOINT_INTERVAL_SECONDS,
)
from spotrun_api.durations import parse_duration
from spotrun_api.enums import AccessMode, CapacityType, ImagePullPolicy

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]
DEFAULT_INSTANCE_TYPES = ("p4d.24xlarge",)
DEFAULT_WAIT_BEFORE_SHRINK = "10m"


class InvalidSpec(ValueError):
    """A spec the model rejects; the message names every offending field."""


class EnvVar(ApiModel):
    """A Kubernetes EnvVar (name plus value or valueFrom)."""

    model_config = ConfigDict(extra="allow")

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
    )

    @field_validator("on_demand_fallback_after")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


class Elasticity(ApiModel):
    min_nodes: int = Field(
        ge=1,
        le=512,
        description="The fewest nodes an attempt may run with (at most nodes). An attempt "
        "whose gang stays unschedulable for waitBeforeShrink is stopped (no budget spent) "
        "and the next one runs with as many nodes as fit, never fewer than this; any later "
        "attempt asks for nodes again.",
    )
    wait_before_shrink: str = Field(
        DEFAULT_WAIT_BEFORE_SHRINK,
        max_length=32,
        description="How long an attempt's pods may stay unschedulable (a duration such as "
        "90s or 10m) before the next attempt runs with fewer nodes.",
    )

    @field_validator("wait_before_shrink")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v


class Volume(ApiModel):
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
    )
    interval: str = Field(
        DEFAULT_CHECKPOINT_INTERVAL,
        max_length=32,
        description="Time between periodic checkpoints (a duration of at least 1s such as 15m; "
        "SPOTRUN_CHECKPOINT_INTERVAL_SECONDS), or auto to pick it from the preemptions "
        "observed so far (Young/Daly).",
    )
    keep: int = Field(
        3, ge=1, le=1000, description="How many committed step-<N> folders the trainer keeps."
    )
    s3_uri: str | None = Field(
        None,
        max_length=1024,
        description="Optional s3://bucket/prefix the trainer mirrors checkpoints to.",
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


class TrainingRunSpec(ApiModel):
    """What to train and how to survive losing nodes."""

    image: str = Field(
        min_length=1,
        max_length=1024,
        description="Container image of the trainer (for example the spotrun trainer image).",
    )
    image_pull_policy: ImagePullPolicy | None = Field(
        None,
        description="When the kubelet pulls the image; the Kubernetes default when unset.",
    )
    command: list[Annotated[str, Field(description="One argument of the entrypoint.")]] = Field(
        default_factory=list,
        max_length=64,
        description="Entrypoint of the trainer container; the image's ENTRYPOINT when unset.",
    )
    args: list[Annotated[str, Field(description="One argument.")]] = Field(
        default_factory=list,
        max_length=256,
        description="Arguments to the entrypoint; the image's CMD when unset.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=256,
        description="Extra environment variables of the trainer container (Kubernetes EnvVar "
        "objects). The SPOTRUN_* variables of the trainer contract are set by the operator "
        "and cannot be overridden.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=512,
        description="Number of nodes (PyTorchJob replicas): one Master plus nodes-1 Workers, "
        "one pod per node.",
    )
    gpus_per_node: int = Field(
        8,
        ge=0,
        le=16,
        description="nvidia.com/gpu limit of each pod (8 for a whole p4d.24xlarge).",
    )
    procs_per_node: int | None = Field(
        None,
        ge=1,
        le=128,
        description="Training processes (ranks) each pod starts: SPOTRUN_PROCS_PER_NODE for "
        "the spotrun trainer, which starts them through torchrun (launcher mode), and the "
        "PyTorchJob's nprocPerNode (PET_NPROC_PER_NODE) for a plain torchrun command. "
        "Default: gpusPerNode (one rank per GPU), or 1 when gpusPerNode is 0.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Container resources beyond GPUs (cpu, memory, ephemeral-storage). GPUs "
        "come from gpusPerNode.",
    )
    capacity: Capacity = Field(
        default_factory=Capacity,
        description="Which nodes the run may use.",
        json_schema_extra={"default": {}},
    )
    elasticity: Elasticity | None = Field(
        None,
        description="Lets an attempt run with fewer nodes than nodes when the whole gang "
        "does not fit (the trainer resumes the checkpoint at the new world size). Unset: "
        "every attempt waits for all nodes.",
    )
    checkpoint: Checkpoint = Field(description="Where and how often the trainer checkpoints.")
    max_preemptions: int = Field(
        100,
        ge=1,
        description="Preemptions (attempts lost to the infrastructure) the run may spend; the "
        "run fails when this many have happened. Separate from maxFailures.",
    )
    max_failures: int = Field(
        3,
        ge=1,
        description="Application failures (crashes, OOM kills) the run may spend; the run "
        "fails when this many have happened. Preemptions never count here.",
    )
    budget: Budget | None = Field(None, description="Spending limits of the run.")
    suspend: bool = Field(
        False,
        description="true stops the current attempt gracefully (phase Suspended); false again "
        "starts the next attempt from the newest checkpoint.",
    )
    protect_from_voluntary_disruption: bool = Field(
        True,
        description="true puts karpenter.sh/do-not-disrupt and cluster-autoscaler.kubernetes.io/"
        "safe-to-evict=false on the trainer pods, so consolidation, drift and scale-down wait "
        "for the run instead of costing a restart; spot interruptions still stop the gang at "
        "once. false leaves the pods to them.",
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The Kueue LocalQueue (in the run's namespace) that admits every attempt: "
        "each PyTorchJob is created suspended with the kueue.x-k8s.io/queue-name label and "
        "runs only once Kueue admits it. Unset: attempts start without Kueue.",
    )
    termination_grace_period_seconds: int = Field(
        DEFAULT_TERMINATION_GRACE_SECONDS,
        ge=1,
        le=3600,
        description="Seconds each rank gets between SIGTERM and SIGKILL to save a checkpoint "
        "(the trainer reads it as SPOTRUN_TERMINATION_GRACE_SECONDS); 110 fits inside AWS's "
        "2-minute spot interruption notice.",
    )
    pod_template: dict[str, Any] = Field(
        default_factory=dict,
        description="A partial Kubernetes PodTemplateSpec (metadata, spec) merged into every "
        "pod: nodeSelector, tolerations, affinity, volumes, extra containers. A container "
        "named pytorch is merged into the trainer container.",
    )

    @field_validator("elasticity")
    @classmethod
    def _min_nodes(cls, v: Elasticity | None, info: ValidationInfo) -> Elasticity | None:
        """elasticity.minNodes <= nodes (the CRD's CEL rule on the spec)."""
        nodes = info.data.get("nodes")
        if v is not None and isinstance(nodes, int) and v.min_nodes > nodes:
            raise ValueError(f"minNodes {v.min_nodes} must be at most spec.nodes {nodes}")
        return v

    @model_validator(mode="after")
    def _default_procs(self) -> Self:
        """procsPerNode's default follows gpusPerNode: one rank per GPU, or 1 without GPUs."""
        if self.procs_per_node is None:
            self.procs_per_node = max(1, self.gpus_per_node)
        return self

    # --- derived views (read-only) -----------------------------------------------------
    @property
    def ranks_per_pod(self) -> int:
        return self.procs_per_node or max(1, self.gpus_per_node)

    @property
    def max_usd(self) -> float | None:
        return self.budget.max_usd if self.budget else None

    @property
    def shrink_after_seconds(self) -> float | None:
        """spec.elasticity.waitBeforeShrink in seconds; None: never shrink."""
        e = self.elasticity
        return parse_duration(e.wait_before_shrink) if e else None

    @property
    def fallback_seconds(self) -> float | None:
        """spec.capacity.onDemandFallbackAfter in seconds; None: never fall back."""
        raw = self.capacity.on_demand_fallback_after
        return parse_duration(raw) if raw else None


def _field_path(obj: Any, loc: tuple[int | str, ...], missing: bool) -> list[str]:
    """The part of an error's ``loc`` that names a place in the input (pydantic appends
    union member tags such as ``int`` that the user never wrote)."""
    path: list[str] = []
    node = obj
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif not (missing and last):
            break
        path.append(str(part))
    return path


def error_text(exc: ValidationError, obj: Any = None, root: str = "spec") -> str:
    """``spec.a.b: message; ...`` for every error, naming the field as the CRD does."""
    by_path: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        parts = _field_path(obj, loc, err["type"] == "missing") if obj is not None else loc
        where = ".".join([root, *(str(p) for p in parts)])
        msg = str(err["msg"]).removeprefix("Value error, ")
        by_path.setdefault(where, []).append(msg)
    return "; ".join(f"{where}: {' or '.join(msgs)}" for where, msgs in by_path.items())


def parse_spec(obj: Any) -> TrainingRunSpec:
    """Parse a TrainingRun's ``spec`` JSON; :class:`InvalidSpec` on what the CRD would
    reject (and on what the operator could not build from)."""
    if not isinstance(obj, dict):
        raise InvalidSpec(f"spec: must be an object, got {type(obj).__name__}")
    try:
        return TrainingRunSpec.model_validate(obj)
    except ValidationError as exc:
        raise InvalidSpec(error_text(exc, obj)) from None
