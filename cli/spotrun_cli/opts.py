"""Run options of the TorchX scheduler ``spotrun`` (``torchx runopts spotrun``).

Each option maps to one TrainingRun field; unset options leave the CRD's default. The
pattern (a ``StructuredOpts`` dataclass whose field docstrings become the help text) is
TorchX's own, see torchx/schedulers/kubernetes_scheduler.py ``Opts`` in
meta-pytorch/torchx.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchx.schedulers.api import StructuredOpts


@dataclass
class SpotrunOpts(StructuredOpts):  # type: ignore[misc]  # torchx ships no type hints
    """Typed run options of the spotrun scheduler."""

    namespace: str | None = None
    """Namespace of the TrainingRun (default: the kubeconfig context's, else default)."""

    capacity_type: str | None = None
    """spec.capacity.type: spot (default) or on-demand."""

    instance_types: list[str] | None = None
    """spec.capacity.instanceTypes, comma separated (default: the role's instance type)."""

    on_demand_fallback_after: str | None = None
    """spec.capacity.onDemandFallbackAfter: unschedulable on spot this long (30m) -> on-demand."""

    checkpoint_claim: str | None = None
    """spec.checkpoint.volume.claimName: an existing PVC (default: the app's volume mount)."""

    checkpoint_size: str | None = None
    """spec.checkpoint.volume.size: a new PVC of this size (500Gi) instead of an existing claim."""

    checkpoint_storage_class: str | None = None
    """spec.checkpoint.volume.storageClassName of the new PVC (with checkpoint_size)."""

    checkpoint_path: str | None = None
    """spec.checkpoint.path: the volume's mount path (default: the mount's dst or /checkpoints)."""

    checkpoint_interval: str | None = None
    """spec.checkpoint.interval: time between checkpoints (15m) or auto."""

    checkpoint_keep: int | None = None
    """spec.checkpoint.keep: checkpoints kept on the volume."""

    s3_uri: str | None = None
    """spec.checkpoint.s3Uri: s3://bucket/prefix mirror of the checkpoints."""

    max_preemptions: int | None = None
    """spec.maxPreemptions: preemptions the run may spend."""

    max_failures: int | None = None
    """spec.maxFailures: application failures the run may spend (default: max_retries if > 0)."""

    budget_usd: float | None = None
    """spec.budget.maxUSD: estimated GPU-node spend at which the run is suspended."""

    queue: str | None = None
    """spec.queueName: the Kueue LocalQueue admitting the run's attempts."""

    image_pull_policy: str | None = None
    """spec.imagePullPolicy: Always, IfNotPresent or Never."""

    pod_template: str | None = None
    """A YAML file with a partial PodTemplateSpec (nodeSelector, tolerations): spec.podTemplate."""

    grace_period_seconds: int | None = None
    """spec.terminationGracePeriodSeconds: SIGTERM -> SIGKILL, for the checkpoint on stop."""
