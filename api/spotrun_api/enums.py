"""The closed vocabularies of a TrainingRun's status (str enums: the JSON is the value)."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """``status.phase``."""

    PENDING = "Pending"
    RUNNING = "Running"
    RECOVERING = "Recovering"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Outcome(StrEnum):
    """``status.attempts[].outcome``: how an attempt ended."""

    SUCCEEDED = "Succeeded"
    PREEMPTED = "Preempted"
    FAILED = "Failed"
    CONFIG_ERROR = "ConfigurationError"
    CAPACITY_FALLBACK = "CapacityFallback"
    # Unschedulable for spec.elasticity.waitBeforeShrink: the next attempt runs with fewer
    # nodes (Attempt.shrinkTo); no budget spent, no backoff.
    CAPACITY_SHRINK = "CapacityShrink"
    # A shrunk attempt (spec.elasticity) ran while warm placeholders held the nodes it
    # lacked: it is stopped gracefully so that the next one runs with spec.nodes again;
    # no budget spent, no backoff.
    CAPACITY_GROW = "CapacityGrow"
    SUSPENDED = "Suspended"
    BUDGET_EXCEEDED = "BudgetExceeded"
    QUEUE_PREEMPTED = "QueuePreempted"
    # Stopped from outside with no infrastructure evidence (a plain pod delete, the pod's
    # activeDeadlineSeconds, an unexplained SIGTERM): restarted, no budget spent.
    INTERRUPTED = "Interrupted"
    # A pod of the gang could not be placed and the training operator's wait for it gave
    # up (its init container failed): capacity, no budget spent, no backoff.
    INCOMPLETE_GANG = "IncompleteGang"

    @property
    def is_loss(self) -> bool:
        """A loss grows the backoff (a fallback or a suspend is a decision, not a loss)."""
        return self in (Outcome.PREEMPTED, Outcome.FAILED, Outcome.INTERRUPTED)

    @property
    def recovering_from(self) -> bool:
        """The next attempt of this outcome is a recovery (phase Recovering)."""
        return self in (
            Outcome.PREEMPTED,
            Outcome.FAILED,
            Outcome.CAPACITY_FALLBACK,
            Outcome.CAPACITY_SHRINK,
            Outcome.CAPACITY_GROW,
            Outcome.INTERRUPTED,
            Outcome.INCOMPLETE_GANG,
        )


class ConditionType(StrEnum):
    """``status.conditions[].type`` values the operator sets."""

    RUNNING = "Running"
    RECOVERING = "Recovering"
    CAPACITY_AVAILABLE = "CapacityAvailable"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    WITHIN_BUDGET = "WithinBudget"
    PRICING_AVAILABLE = "PricingAvailable"
    ADMITTED = "Admitted"  # Kueue admitted the live attempt (runs with spec.queueName only)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class RunReason(StrEnum):
    """Reasons of a run's terminal condition (and its event)."""

    COMPLETED = "Completed"
    INVALID_SPEC = "InvalidSpec"
    MAX_PREEMPTIONS = "MaxPreemptionsReached"
    MAX_FAILURES = "MaxFailuresReached"
    CONFIG_ERROR = "ConfigurationError"


class CapacityType(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


class ImagePullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class AccessMode(StrEnum):
    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"
