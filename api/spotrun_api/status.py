"""``TrainingRun.status``: attempts, progress, cost, conditions (typed, camelCase JSON).

Times are RFC 3339 strings exactly as the apiserver stores them (second precision when
the operator writes them); the operator parses them where it computes with them.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel
from pydantic.dataclasses import dataclass

from spotrun_api.base import ApiModel, Int32, Int64, Time, crd_extra, no_schema_default
from spotrun_api.enums import ConditionStatus, Outcome, Phase
from spotrun_api.spares import SparesStatus

# --- status.progress, written by the trainer (rank 0) ---------------------------------
PROGRESS_FIELDS: Final = (
    "step",  # int: optimizer steps done
    "checkpointStep",  # int: step of the newest committed checkpoint
    "checkpointTime",  # RFC 3339 UTC time that checkpoint was committed
    "checkpointPath",  # path of that checkpoint folder on the volume
    "samplesPerSecond",  # float: recent training throughput, whole gang
    "attempt",  # int: SPOTRUN_ATTEMPT of the writer, so stale writers are recognisable
    "checkpointStallSeconds",  # float: seconds the loop was blocked by the newest save
    "restartPhases",  # object: this attempt's seconds from process start to its first step
)
# Fields that describe the writing attempt only. status.progress is merge-patched, so an
# absent key keeps the previous attempt's value: a patch sends these as null until the
# current attempt has its own value (checkpoint fields describe the volume and carry over).
PER_ATTEMPT_PROGRESS_FIELDS: Final = ("samplesPerSecond", "attempt", "restartPhases")


@dataclass(frozen=True, config=ConfigDict(alias_generator=to_camel, populate_by_name=True))
class RestartPhases:
    """Where this attempt's time went before its first step (docs/trainer.md), in seconds."""

    start: float = Field(description="Process start until the trainer library was imported.")
    imports: float = Field(description="Framework imports (torch and the program's).")
    process_group: float = Field(description="Process group set-up and rendezvous.")
    load: float = Field(
        description="Building the model, finding and loading the checkpoint (fence included)."
    )
    first_step: float = Field(description="From the load until the first step was done.")
    t0: float = Field(description="The process start, in Unix epoch seconds.")


@dataclass(frozen=True, config=ConfigDict(alias_generator=to_camel, populate_by_name=True))
class Progress:
    """Training progress, written by the trainer (rank 0)."""

    step: Int64 = Field(
        default=0, description="Optimizer steps done.", json_schema_extra=no_schema_default
    )
    checkpoint_step: Int64 | None = Field(
        default=None, description="Step of the newest committed checkpoint."
    )
    checkpoint_time: Time | None = Field(
        default=None, description="When that checkpoint was committed."
    )
    checkpoint_path: str | None = Field(
        default=None, description="Path of that checkpoint folder on the volume."
    )
    samples_per_second: float | None = Field(
        default=None, description="Recent training throughput of the whole gang."
    )
    attempt: Int32 | None = Field(
        default=None, description="SPOTRUN_ATTEMPT of the trainer that wrote this."
    )
    checkpoint_stall_seconds: float | None = Field(
        default=None,
        description="Seconds the training loop was blocked by the newest periodic checkpoint "
        "save (the C of checkpoint.interval auto).",
    )
    restart_phases: RestartPhases | None = Field(
        default=None,
        description="This attempt's start-up, from its process start to its first training "
        "step, by phase (rank 0's).",
    )

    def to_status(self) -> dict[str, Any]:
        """The JSON object patched under ``status.progress`` (None fields omitted)."""
        out: dict[str, Any] = _PROGRESS.dump_python(self, by_alias=True, exclude_none=True)
        return out

    def to_patch(self) -> dict[str, Any]:
        """``to_status()`` plus an explicit null for every per-attempt field not known yet,
        so a JSON merge patch clears what an earlier attempt wrote there."""
        out: dict[str, Any] = dict.fromkeys(PER_ATTEMPT_PROGRESS_FIELDS)
        out.update(self.to_status())
        return out

    @classmethod
    def from_status(cls, obj: dict[str, Any] | None) -> Progress | None:
        """Parse ``status.progress``; None when absent."""
        if not obj:
            return None
        return _PROGRESS.validate_python(obj)


_PROGRESS: Final = TypeAdapter(Progress)


# --- the operator's part -----------------------------------------------------------------
class LastPreemption(ApiModel):
    attempt: int | None = Field(None, description="Attempt that was preempted.")
    time: Time | None = Field(
        None,
        description="When the interruption signal was given: its own timestamp (a pod's "
        "DisruptionTarget, a node's Ready transition, deletion or taint timeAdded), else when "
        "the operator saw it.",
    )
    node: str | None = Field(None, description="Node that was reclaimed.")
    zone: str | None = Field(None, description="topology.kubernetes.io/zone of that node.")
    instance_type: str | None = Field(
        None, description="node.kubernetes.io/instance-type of that node."
    )
    signal: str | None = Field(
        None,
        description="What announced it (a bounded set, docs/signals.md): spot-interruption, "
        "asg-termination, scheduled-maintenance, karpenter-disruption, gke-preemption, "
        "aks-spot-eviction, rebalance-recommendation, ca-scale-down, instance-state-change, "
        "mng-rebalance, out-of-service, node-shutdown, cloud-shutdown, node-lost, "
        "node-pressure, kubelet-preemption, taint-eviction, scheduler-preemption, eviction, "
        "disruption, peer-lost, pod-replaced, pod-stopped.",
    )
    lost_work_seconds: float | None = Field(
        None, description="Training time not covered by a committed checkpoint."
    )


class CostStatus(ApiModel):
    spot_usd: float | None = Field(None, alias="spotUSD", description="USD spent on spot nodes.")
    on_demand_usd: float | None = Field(
        None, alias="onDemandUSD", description="USD spent on on-demand nodes."
    )
    total_usd: float | None = Field(
        None,
        alias="totalUSD",
        description="spotUSD + onDemandUSD + sparesUSD: what spec.budget.maxUSD is checked "
        "against.",
    )
    on_demand_equivalent_usd: float | None = Field(
        None,
        alias="onDemandEquivalentUSD",
        description="What the same node-hours would cost on-demand.",
    )
    savings_percent: float | None = Field(
        None, description="Saving against running every node-hour on-demand."
    )
    gpu_hours: float | None = Field(None, description="GPU-hours used by all attempts.")
    spares_usd: float | None = Field(
        None,
        alias="sparesUSD",
        description="USD of the nodes held by warm spares (spec.capacity.warmSpares), "
        "from each spare's binding to its end; part of totalUSD.",
    )
    spare_node_seconds: float | None = Field(None, description="Node-seconds held by warm spares.")
    updated_at: Time | None = Field(None, description="When this estimate was computed.")


class Display(ApiModel):
    cost: str | None = Field(None, description="cost.totalUSD as dollars, for example $12.40.")
    savings: str | None = Field(None, description="cost.savingsPercent rounded, for example 67%.")
    lost_work: str | None = Field(
        None, description="Training time lost over the recorded attempts, for example 12m30s."
    )
    gpu_hours: str | None = Field(None, description="cost.gpuHours with one decimal.")
    last: str | None = Field(
        None,
        description="The newest attempt that ended in anything but success: its signal or "
        "outcome and reason, and its number (spot-interruption a3); - when none.",
    )
    last_at: Time | None = Field(None, description="When that attempt's outcome was recorded.")


class Condition(ApiModel):
    """One aspect of the run's state."""

    type: str = Field(
        description="Running, Recovering, CapacityAvailable, Suspended, Succeeded or Failed."
    )
    status: ConditionStatus = Field(description="Status of the condition.")
    reason: str = Field(description="CamelCase reason of the last transition.")
    message: str = Field(description="Human-readable details.")
    last_transition_time: Time = Field(description="When the status last changed.")
    observed_generation: Int64 | None = Field(
        None, description="The metadata.generation the condition was set from."
    )


class NodeInterruption(ApiModel):
    """One node of an attempt's gang that was lost, with its own signal."""

    node: str = Field(description="Node name.")
    signal: str = Field(description="The signal the node gave (docs/signals.md).")


class Attempt(ApiModel):
    """One attempt (PyTorchJob <run>-a<attempt>)."""

    attempt: int = Field(description="Attempt number.")
    capacity_type: str | None = Field(None, description="spot or on-demand.")
    nodes: int | None = Field(
        None,
        description="Number of nodes of the attempt (fewer than spec.nodes when it runs "
        "shrunk, spec.elasticity).",
    )
    gpus: int | None = Field(None, description="GPUs per node of the attempt.")
    shrink_to: int | None = Field(
        None,
        description="Nodes the next attempt runs with (spec.elasticity): set when this "
        "attempt was stopped to shrink (outcome CapacityShrink).",
    )
    created_at: Time | None = Field(None, description="When the operator decided to create it.")
    started_at: Time | None = Field(None, description="When every pod was first seen Running.")
    ended_at: Time | None = Field(None, description="When its outcome was recorded.")
    stopped_at: Time | None = Field(None, description="When its last pod was gone.")
    next_attempt_at: Time | None = Field(
        None, description="Earliest creation time of the next attempt (backoff)."
    )
    outcome: Outcome | None = Field(None, description="How it ended.")
    reason: str | None = Field(None, description="Signal (preemptions) or failure reason.")
    message: str | None = Field(None, description="Details of the outcome.")
    node: str | None = Field(None, description="Node behind the outcome, when one.")
    zone: str | None = Field(None, description="Zone of that node.")
    interrupted_nodes: list[Annotated[str, Field(description="A node name.")]] | None = Field(
        None,
        description="Every node of the gang lost in this attempt: the nodes that announced "
        "the interruption, and those lost after it before the next attempt was created.",
    )
    interruptions: list[NodeInterruption] | None = Field(
        None,
        description="The signal each node of interruptedNodes gave, as first seen on the "
        "node (nodes whose loss shows only on their pods are not listed).",
    )
    instance_type: str | None = Field(None, description="Instance type the attempt ran on.")
    zones: (
        list[Annotated[str, Field(description="A topology.kubernetes.io/zone value.")]] | None
    ) = Field(None, description="Zones of the attempt's nodes, one entry per node.")
    lost_work_seconds: float | None = Field(None, description="Work lost with this attempt.")
    start_step: Int64 | None = Field(
        None,
        description="Step this attempt resumed from (the newest committed checkpoint when it "
        "was created; 0 for a fresh start).",
    )
    end_step: Int64 | None = Field(
        None,
        description="Last step this attempt reported when its outcome was recorded; steps "
        "trained are endStep - startStep.",
    )
    unschedulable_since: Time | None = Field(
        None, description="Since when its pods are unschedulable (unset when they are not)."
    )
    config_error_since: Time | None = Field(
        None, description="Since when a configuration error is seen (unset when none)."
    )
    notice_since: Time | None = Field(
        None,
        description="When the operator first saw a spot interruption notice on a node of "
        "the gang while it trains through notices (--train-through-notice): the gang stops "
        "gracefully by this time + 120 s - the stop margin at the latest.",
    )
    checkpoint_interval_seconds: int | None = Field(
        None, description="SPOTRUN_CHECKPOINT_INTERVAL_SECONDS given to this attempt."
    )
    pod_uids: list[Annotated[str, Field(description="A pod UID.")]] | None = Field(
        None,
        alias="podUIDs",
        description="UIDs of its pods once running; a changed UID means a replaced pod.",
    )
    spot_usd: float | None = Field(
        None, alias="spotUSD", description="USD this attempt spent on spot nodes."
    )
    on_demand_usd: float | None = Field(
        None, alias="onDemandUSD", description="USD this attempt spent on on-demand nodes."
    )
    on_demand_equivalent_usd: float | None = Field(
        None,
        alias="onDemandEquivalentUSD",
        description="On-demand price of this attempt's node-hours.",
    )
    gpu_hours: float | None = Field(None, description="GPU-hours this attempt used.")

    @property
    def frozen_cost(self) -> bool:
        """Its spend was fixed when its last pod was gone."""
        return self.spot_usd is not None


class Archived(ApiModel):
    attempts: int | None = Field(None, description="How many attempts were archived.")
    spot_usd: float | None = Field(None, alias="spotUSD", description="Their spot spend.")
    on_demand_usd: float | None = Field(
        None, alias="onDemandUSD", description="Their on-demand spend."
    )
    on_demand_equivalent_usd: float | None = Field(
        None, alias="onDemandEquivalentUSD", description="Their on-demand-equivalent price."
    )
    gpu_hours: float | None = Field(None, description="Their GPU-hours.")


class TrainingRunStatus(ApiModel):
    """Observed state, written by the operator (progress by the trainer)."""

    phase: Phase | None = Field(
        None,
        description="Pending (first attempt starting), Running, Recovering (between a lost "
        "attempt and the next one running), Suspended, Succeeded or Failed.",
    )
    message: str | None = Field(None, description="Human-readable summary of the latest decision.")
    observed_generation: Int64 | None = Field(
        None, description="The metadata.generation this status was computed from."
    )
    attempt: Int32 | None = Field(
        None, description="Number of the current attempt; its PyTorchJob is <run>-a<attempt>."
    )
    preemptions: Int32 | None = Field(
        None, description="Attempts lost to the infrastructure so far."
    )
    failures: Int32 | None = Field(
        None, description="Attempts lost to application failures so far."
    )
    queue_preemptions: Int32 | None = Field(
        None,
        description="Attempts Kueue preempted or evicted so far (spec.queueName): they spend "
        "neither maxPreemptions nor maxFailures.",
    )
    start_time: Time | None = Field(None, description="When the first attempt was created.")
    completion_time: Time | None = Field(
        None, description="When the run reached Succeeded or Failed."
    )
    last_preemption: LastPreemption | None = Field(None, description="The most recent preemption.")
    progress: Progress | None = Field(
        None, description="Training progress, written by the trainer (rank 0)."
    )
    cost: CostStatus | None = Field(
        None, description="Estimated spend from node-hours and list prices."
    )
    display: Display | None = Field(
        None,
        description="Human-readable forms of the figures above, for kubectl's printer columns "
        "(written by the operator from the rest of status).",
    )
    conditions: list[Condition] | None = Field(
        None,
        description="Conditions per Kubernetes API conventions.",
        json_schema_extra=crd_extra(list_type="map", list_map_keys=["type"]),
    )
    attempts: list[Attempt] | None = Field(
        None,
        description="Recent attempts, keyed by number; the operator records each attempt's "
        "outcome here before acting on it, which makes counting exactly-once.",
        json_schema_extra=crd_extra(list_type="map", list_map_keys=["attempt"]),
    )
    archived: Archived | None = Field(
        None, description="Totals of older attempts dropped from the attempts list."
    )
    spares: SparesStatus | None = Field(
        None,
        description="The warm spares (spec.capacity.warmSpares) as last set, and the nodes "
        "they hold.",
    )


# The fields the operator owns (and so may write); progress is the trainer's.
OPERATOR_FIELDS: Final = tuple(
    f.alias or name for name, f in TrainingRunStatus.model_fields.items() if name != "progress"
)


def parse_status(obj: Any) -> TrainingRunStatus:
    """``TrainingRun.status`` JSON (absent: empty); ValidationError on a malformed one."""
    return TrainingRunStatus.model_validate(obj or {})
