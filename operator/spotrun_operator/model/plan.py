"""Data passed between observation (observe.py), decision (reconcile.py) and execution.

A reconcile is: observe everything into :class:`Observed` (the run's spec and status
parsed once into the typed model), decide purely into a :class:`Decision`, then write
``Decision.status`` (a compare-and-swap on the run's resourceVersion) *before* executing
``Decision.actions``. Every action is idempotent and derivable again from the written
status, so a crash between any two API calls is repaired by the next reconcile.

Bad input is a verdict, never an exception: a spec the model rejects arrives as
``Observed.spec_error``, and a child the apiserver refused to create (HTTP 422) as
``Observed.rejected``; either ends the run ``Failed`` with reason ``InvalidSpec``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spotrun_api.enums import Phase
from spotrun_api.spec import TrainingRunSpec
from spotrun_api.status import TrainingRunStatus
from spotrun_operator.facts.pools import PoolTally
from spotrun_operator.facts.signals import NodeInfo
from spotrun_operator.money.cost import Price, Prices

Obj = dict[str, Any]


@dataclass(frozen=True)
class RunRef:
    """Identity of a TrainingRun: what owner references and names need."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


@dataclass(frozen=True)
class Rejected:
    """The apiserver refused a child of the run (or a dry run of it): what the spec asks
    for cannot run. The I/O layer observes again with ``Observed.rejected`` set, and
    :func:`reconcile.decide` fails the run (InvalidSpec)."""

    kind: str  # PyTorchJob, Pod, PersistentVolumeClaim, ...
    name: str
    message: str  # the apiserver's message, naming the field


@dataclass(frozen=True)
class Observed:
    ref: RunRef
    spec: TrainingRunSpec | None  # None: the spec is invalid (spec_error says why)
    status: TrainingRunStatus
    now: dt.datetime
    spec_error: str = ""
    rejected: Rejected | None = None
    jobs: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # attempt -> PyTorchJob
    # attempt -> Kueue's Workload of its PyTorchJob (spec.queueName only; the live attempt)
    workloads: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    pods: Sequence[Mapping[str, Any]] = ()  # live pods of the run, every attempt
    deleted_pods: Sequence[Mapping[str, Any]] = ()  # last state of pods seen deleted
    # The warm spares' pods (spotrun.dev/spare-of), never among pods or deleted_pods.
    spare_pods: Sequence[Mapping[str, Any]] = ()
    deleted_spare_pods: Sequence[Mapping[str, Any]] = ()
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    # Every existing node the watch knows: whether a gang can be placed before its job is
    # created (elasticity.unplaceable), where a smaller one could fit (fitting_nodes).
    # None: no view of the fleet (nothing is checked).
    fleet: Mapping[str, NodeInfo] | None = None
    missing_refs: Sequence[str] = ()  # "Secret foo" the pods would need and that is absent
    interrupted_nodes: Sequence[str] = ()  # nodes that are going (signals.going)
    rand: float = 0.5  # uniform [0, 1): the backoff jitter, injected to keep this pure
    prices: Mapping[str, Price] | Prices | None = None  # None: cost.DEFAULT_PRICES
    pricing_condition: Mapping[str, str] | None = None  # PricingAvailable, when priced by AWS
    # Interruptions and node-seconds per capacity pool over every run's finished attempts.
    pools: PoolTally = field(default_factory=dict)
    deleting: bool = False


# --- actions, executed in order after the status write --------------------------------


@dataclass(frozen=True)
class EnsureObjects:
    """Create these if absent (409 is success): PVC, ServiceAccount, Role, RoleBinding.
    The I/O layer skips those it made (or found) before for the same run."""

    objects: tuple[Obj, ...]


@dataclass(frozen=True)
class CreateJob:
    body: Obj
    # What the body is built from ("<run uid>/<generation>"): the apiserver's dry run of
    # one attempt's job vouches for the next attempts' built from the same spec.
    source: str = ""


@dataclass(frozen=True)
class ValidateJob:
    """The apiserver's dry run of a job not created yet (its gang cannot be placed): a spec
    it refuses fails the run at once instead of waiting for capacity. Once per ``source``,
    as for :class:`CreateJob`."""

    body: Obj
    source: str = ""


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class DeletePods:
    """Delete pods; ``grace_seconds`` 0 force-deletes (pods of a node that is gone)."""

    names: tuple[str, ...]
    grace_seconds: int


@dataclass(frozen=True)
class ApplySpares:
    """Server-side apply of the warm spares' Deployment (model.spares). Derived again at
    every reconcile of an active run: the I/O layer skips a body it applied for the run a
    short while ago, so a Deployment changed or deleted behind its back is put back."""

    body: Obj


@dataclass(frozen=True)
class DeleteSpares:
    """Delete the warm spares' Deployment (404 is success); its pods follow it."""

    name: str


Action = (
    EnsureObjects | CreateJob | ValidateJob | DeleteJob | DeletePods | ApplySpares | DeleteSpares
)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    key: str | None = None  # set: post at most once per key per operator process


@dataclass(frozen=True)
class MetricEvent:
    """Something to count once the status write that decided it succeeded."""

    name: str  # preemption | failure | lost_work | recovery | placement
    labels: Mapping[str, str] = field(default_factory=dict)
    value: float = 1.0


@dataclass(frozen=True)
class RunGauges:
    """Per-run figures exported as gauges after each reconcile (None: no such series)."""

    spot_usd: float = 0.0
    on_demand_usd: float = 0.0
    spares_usd: float | None = None  # None: the run never had warm spares
    savings_ratio: float | None = None  # 1 - paid / on-demand equivalent; None: nothing priced
    budget_used_ratio: float | None = None  # None: the run has no spec.budget.maxUSD
    checkpoint_interval_seconds: float | None = None  # of the live attempt
    checkpoint_stall_seconds: float | None = None  # status.progress: the newest save's stall


@dataclass
class Decision:
    status: Obj | None = None  # merge patch of status; None: nothing to write
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    metrics: list[MetricEvent] = field(default_factory=list)
    requeue_after: float = 30.0
    phase: Phase | None = None
    checkpoint_time: str | None = None
    gauges: RunGauges | None = None
