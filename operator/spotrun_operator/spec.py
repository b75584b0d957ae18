"""Typed view of ``TrainingRun.spec`` with the CRD's defaults applied (pure).

The apiserver already defaults and validates; parsing again here keeps the operator
correct against objects that skipped that (unit tests, an older CRD version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from spotrun_operator.common import parse_duration
from spotrun_trainer import contract

CapacityType = Literal["spot", "on-demand"]
DEFAULT_INSTANCE_TYPES = ("p4d.24xlarge",)


@dataclass(frozen=True)
class VolumeSpec:
    claim_name: str | None = None
    size: str | None = None
    storage_class_name: str | None = None
    access_mode: str = "ReadWriteMany"


@dataclass(frozen=True)
class CheckpointSpec:
    volume: VolumeSpec
    path: str = "/checkpoints"
    interval: str = "15m"  # a duration or "auto"
    keep: int = 3
    s3_uri: str | None = None


@dataclass(frozen=True)
class RunSpec:
    image: str
    checkpoint: CheckpointSpec
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    image_pull_policy: str | None = None
    nodes: int = 1
    gpus_per_node: int = 8
    procs_per_node: int = 8  # ranks per pod: spec.procsPerNode, else gpusPerNode (or 1)
    resources: dict[str, Any] = field(default_factory=dict)
    capacity_type: CapacityType = "spot"
    instance_types: tuple[str, ...] = DEFAULT_INSTANCE_TYPES
    on_demand_fallback_after: float | None = None  # seconds
    max_preemptions: int = 100
    max_failures: int = 3
    max_usd: float | None = None
    suspend: bool = False
    termination_grace_period_seconds: int = contract.DEFAULT_TERMINATION_GRACE_SECONDS
    pod_template: dict[str, Any] = field(default_factory=dict)


def parse_interval(raw: Any) -> str:
    """``spec.checkpoint.interval``: ``auto`` or a duration of at least 1s (the trainer
    reads an interval of 0 as "no timed checkpoints", so shorter ones mean nothing)."""
    interval = str(raw or "15m")
    if interval == "auto":
        return interval
    try:
        seconds = parse_duration(interval)
    except ValueError as e:
        raise ValueError(f"spec.checkpoint.interval: {e}") from None
    if seconds < contract.MIN_CHECKPOINT_INTERVAL_SECONDS:
        raise ValueError(
            f"spec.checkpoint.interval must be auto or at least "
            f"{contract.MIN_CHECKPOINT_INTERVAL_SECONDS}s, got {interval!r}"
        )
    return interval


def _parse_checkpoint(cp: dict[str, Any]) -> CheckpointSpec:
    vol = cp.get("volume") or {}
    if bool(vol.get("claimName")) == bool(vol.get("size")):
        raise ValueError("spec.checkpoint.volume: set exactly one of claimName or size")
    return CheckpointSpec(
        volume=VolumeSpec(
            claim_name=vol.get("claimName"),
            size=vol.get("size"),
            storage_class_name=vol.get("storageClassName"),
            access_mode=vol.get("accessMode") or "ReadWriteMany",
        ),
        path=str(cp.get("path") or "/checkpoints"),
        interval=parse_interval(cp.get("interval")),
        keep=int(cp.get("keep", 3)),
        s3_uri=cp.get("s3Uri"),
    )


def _parse_procs(spec: dict[str, Any], gpus: int) -> int:
    """``spec.procsPerNode``; unset: one rank per GPU, or 1 on a node without GPUs."""
    raw = spec.get("procsPerNode")
    procs = int(raw) if raw is not None else max(1, gpus)
    if procs < 1:
        raise ValueError("spec.procsPerNode must be >= 1")
    return procs


def parse_spec(spec: dict[str, Any]) -> RunSpec:
    """Parse a TrainingRun's ``spec``; raises ValueError on what the CRD would reject."""
    if not spec.get("image"):
        raise ValueError("spec.image is required")
    checkpoint = _parse_checkpoint(spec.get("checkpoint") or {})
    cap = spec.get("capacity") or {}
    raw_type = cap.get("type") or "spot"
    if raw_type not in ("spot", "on-demand"):
        raise ValueError(f"spec.capacity.type: unsupported value {raw_type!r}")
    ctype: CapacityType = "spot" if raw_type == "spot" else "on-demand"
    fallback = cap.get("onDemandFallbackAfter")
    budget = spec.get("budget") or {}
    nodes = int(spec.get("nodes", 1))
    if nodes < 1:
        raise ValueError("spec.nodes must be >= 1")
    gpus = int(spec.get("gpusPerNode", 8))
    if gpus < 0:
        raise ValueError("spec.gpusPerNode must be >= 0")
    return RunSpec(
        image=str(spec["image"]),
        command=tuple(spec.get("command") or ()),
        args=tuple(spec.get("args") or ()),
        env=tuple(dict(e) for e in spec.get("env") or ()),
        image_pull_policy=spec.get("imagePullPolicy"),
        nodes=nodes,
        gpus_per_node=gpus,
        procs_per_node=_parse_procs(spec, gpus),
        resources=dict(spec.get("resources") or {}),
        capacity_type=ctype,
        instance_types=tuple(cap.get("instanceTypes") or DEFAULT_INSTANCE_TYPES),
        on_demand_fallback_after=parse_duration(fallback) if fallback else None,
        checkpoint=checkpoint,
        max_preemptions=int(spec.get("maxPreemptions", 100)),
        max_failures=int(spec.get("maxFailures", 3)),
        max_usd=float(budget["maxUSD"]) if budget.get("maxUSD") is not None else None,
        suspend=bool(spec.get("suspend", False)),
        termination_grace_period_seconds=int(
            spec.get("terminationGracePeriodSeconds", contract.DEFAULT_TERMINATION_GRACE_SECONDS)
        ),
        pod_template=dict(spec.get("podTemplate") or {}),
    )
