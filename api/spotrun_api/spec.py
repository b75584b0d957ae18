"""``TrainingRun.spec``: the typed model, with every default in exactly one place.

The model is the CRD's single source: ``python -m spotrun_dev.crdgen`` (``make crds``)
writes ``crds/`` from its JSON schema, descriptions (``kubectl explain``), defaults, bounds,
formats and CEL rules included. Validation mirrors the CEL rules the operator relies on, so
a spec that skipped admission (an older CRD, a unit test) is rejected here the same way.
The objects inside the spec live in :mod:`spotrun_api.spec_parts`.
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

from spotrun_api.base import ApiModel, Int32, Int64, cel, crd_extra
from spotrun_api.contract import DEFAULT_TERMINATION_GRACE_SECONDS
from spotrun_api.durations import parse_duration
from spotrun_api.enums import ImagePullPolicy
from spotrun_api.spec_parts import (
    Budget,
    Capacity,
    Checkpoint,
    Elasticity,
    EnvVar,
    Resources,
)


class InvalidSpec(ValueError):
    """A spec the model rejects; the message names every offending field."""


class TrainingRunSpec(ApiModel):
    """What to train and how to survive losing nodes."""

    model_config = ConfigDict(
        json_schema_extra=crd_extra(
            cel(
                "self.nodes == 1 || !has(self.checkpoint.volume.accessMode) "
                "|| self.checkpoint.volume.accessMode == 'ReadWriteMany'",
                "a run with more than one node needs a checkpoint volume every node can "
                "mount: use accessMode ReadWriteMany (or an existing RWX claimName)",
                field_path=".checkpoint.volume.accessMode",
                reason="FieldValueInvalid",
            ),
            cel(
                "!has(self.elasticity) || self.elasticity.minNodes <= self.nodes",
                "spec.elasticity.minNodes must be at most spec.nodes: an attempt never runs "
                "with more nodes than the run asks for",
                field_path=".elasticity.minNodes",
                reason="FieldValueInvalid",
            ),
        )
    )

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
    nodes: Int32 = Field(
        1,
        ge=1,
        le=512,
        description="Number of nodes (PyTorchJob replicas): one Master plus nodes-1 Workers, "
        "one pod per node.",
    )
    gpus_per_node: Int32 = Field(
        8,
        ge=0,
        le=16,
        description="nvidia.com/gpu limit of each pod (8 for a whole p4d.24xlarge).",
    )
    procs_per_node: Int32 | None = Field(
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
    max_preemptions: Int32 = Field(
        100,
        ge=1,
        description="Preemptions (attempts lost to the infrastructure) the run may spend; the "
        "run fails when this many have happened. Separate from maxFailures.",
    )
    max_failures: Int32 = Field(
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
    termination_grace_period_seconds: Int64 = Field(
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
