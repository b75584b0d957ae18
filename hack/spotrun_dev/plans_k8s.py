"""Plans of Karpenter, Cluster Autoscaler, the kubelet, GKE and AKS, and the registry of
every signal ``spotrun-dev interrupt`` knows (pure). Sources are cited per builder; the
fixtures under tests/fixtures/signals/ carry the same citations with line numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from spotrun_dev import plans_aws, traces
from spotrun_dev.plans import (
    AFTER_NOTICE,
    EXCLUDE_LB_LABEL,
    MEMORY_PRESSURE,
    OUT_OF_SERVICE,
    Options,
    Write,
    cordon,
    death,
    evict,
    instance_dies,
    node_lifecycle_unknown,
    taint,
    unix,
)

KARPENTER_DISRUPTED: Final = "karpenter.sh/disrupted"
KARPENTER_FINALIZER: Final = "karpenter.sh/termination"
KARPENTER_DO_NOT_DISRUPT: Final = "karpenter.sh/do-not-disrupt"
CA_TO_BE_DELETED: Final = "ToBeDeletedByClusterAutoscaler"
CA_DELETION_CANDIDATE: Final = "DeletionCandidateOfClusterAutoscaler"
CA_SAFE_TO_EVICT: Final = "cluster-autoscaler.kubernetes.io/safe-to-evict"
CA_MAX_GRACE: Final = 600  # --max-graceful-termination-sec default
AKS_REMEDIATOR: Final = "remediator.kubernetes.azure.com/unschedulable"
GKE_SHUTDOWN_GRACE: Final = 15  # non-system pods' share of GKE's 30 s shutdown
OUT_OF_SERVICE_VALUE: Final = "nodeshutdown"

KUBELET: Final = "kubelet"
K_TERMINATION: Final = "karpenter/node-termination"


def _kubelet_pods(status: dict[str, Any]) -> Write:
    return Write(KUBELET, "PUT pods/status", ({"pod_status": status},), obj="pods")


def _shutting_down() -> Write:
    cond = {
        "type": "Ready",
        "status": "False",
        "reason": "KubeletNotReady",
        "message": traces.NODE_SHUTDOWN_MESSAGE,
    }
    return Write(KUBELET, "PUT node/status", ({"conditions": [cond]},))


def _karpenter_termination(opts: Options, *, tainted: bool) -> list[Write]:
    """kubernetes-sigs/karpenter pkg/controllers/node/termination/controller.go finalize:
    Terminator.Taint (one merge PATCH with optimistic lock: the disrupted taint and the
    exclude-from-load-balancers label; no cordon), awaitDrain (Eviction API by priority
    group, pod's own grace), awaitInstanceTermination, then removeFinalizer: the apiserver
    deletes the Node on that very write."""
    changes: list[dict[str, Any]] = []
    if not tainted:
        changes.append({"taint_added": taint(KARPENTER_DISRUPTED, "NoSchedule")})
    changes.append({"label_added": {"key": EXCLUDE_LB_LABEL, "value": "karpenter"}})
    finalizer = ({"finalizer_removed": KARPENTER_FINALIZER}, {"node_deleted": True})
    drain = evict(K_TERMINATION)
    if opts.termination_grace_period is not None:
        # terminator/eviction.go needsForceDelete: a pod whose grace no longer fits before
        # nodeTerminationTime is deleted (forceDelete, grace = the time left, at least 1 s).
        tgp = {"terminationGracePeriod": opts.termination_grace_period}
        drain = Write(
            K_TERMINATION, "POST pods/eviction | DELETE pod", ({"drained_by": tgp},), obj="pods"
        )
    return [
        Write(K_TERMINATION, "PATCH node", tuple(changes)),
        drain,
        instance_dies(K_TERMINATION, "previous"),
        Write(K_TERMINATION, "PATCH node", finalizer),
    ]


def karpenter_interruption(opts: Options) -> list[Write]:
    """aws/karpenter-provider-aws pkg/controllers/interruption/utils.go actionForMessage:
    spot interruption, scheduled change, stop, terminate -> CordonAndDrain = delete the
    NodeClaim; its lifecycle controller deletes the Node (deletionTimestamp first, the
    karpenter.sh/termination finalizer holds it), then the termination controller acts."""
    deleting = Write("karpenter/nodeclaim-lifecycle", "DELETE node", ({"node_deleting": True},))
    return [deleting, *_karpenter_termination(opts, tainted=False)]


def karpenter_drift(opts: Options) -> list[Write]:
    """Drift and consolidation (pkg/controllers/disruption/queue.go StartCommand): taint
    the candidate first (state.RequireNoScheduleTaint: taint only), launch and await the
    replacement, delete the NodeClaim; the termination controller then adds the label (the
    taint is already there). Pods with karpenter.sh/do-not-disrupt=true keep a node from
    being a candidate at all (pkg/controllers/state/statenode.go ValidatePodsDisruptable)."""
    first = Write(
        "karpenter/disruption",
        "PATCH node",
        ({"taint_added": taint(KARPENTER_DISRUPTED, "NoSchedule")},),
    )
    deleting = Write("karpenter/nodeclaim-lifecycle", "DELETE node", ({"node_deleting": True},))
    return [first, deleting, *_karpenter_termination(opts, tainted=True)]


def karpenter_drift_aborted(opts: Options) -> list[Write]:
    """A drift or consolidation command that fails (the replacement never initialises, or
    the budget closes): the candidate is tainted, then the taint is removed again
    (disruption/queue.go Reconcile L172: RequireNoScheduleTaint(..., false, ...); the
    controller does the same for leftovers, controller.go L147-157). Nothing else."""
    actor = "karpenter/disruption"
    disrupted = taint(KARPENTER_DISRUPTED, "NoSchedule")
    return [
        Write(actor, "PATCH node", ({"taint_added": disrupted},)),
        Write(actor, "PATCH node", ({"taint_removed": disrupted},)),
    ]


def ca_scale_down(opts: Options) -> list[Write]:
    """kubernetes/autoscaler cluster-autoscaler/utils/taints/taints.go: an unneeded node
    gets the soft DeletionCandidate taint, then MarkToBeDeleted (value: unix seconds;
    no cordon unless --cordon-node-before-terminating); core/scaledown/actuation/drain.go
    evicts every pod at once with GracePeriodSeconds = min(pod's, max-graceful-termination
    -sec 600); then the node group deletes the instance. Pods with
    safe-to-evict=false keep the node from being removed at all."""
    now = unix(opts.now)
    ca = "cluster-autoscaler"
    return [
        Write(
            ca,
            "PUT node",
            ({"taint_added": taint(CA_DELETION_CANDIDATE, "PreferNoSchedule", now)},),
        ),
        Write(ca, "PUT node", ({"taint_added": taint(CA_TO_BE_DELETED, "NoSchedule", now)},)),
        evict(ca, f"min(pod,{CA_MAX_GRACE})"),
        *death("ec2-autoscaling", "previous", opts),
    ]


def kubelet_shutdown(opts: Options) -> list[Write]:
    """kubernetes/kubernetes pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go: the
    node reports not ready ('node is shutting down'), every pod is killed with
    min(its grace, the shutdown period) and reported Failed/Terminated with a
    DisruptionTarget TerminationByKubelet; then the instance powers off."""
    status = dict(traces.SHUTDOWN_POD_STATUS)
    return [_shutting_down(), _kubelet_pods(status), *death("ec2", "previous", opts)]


def gke_preempt(opts: Options) -> list[Write]:
    """GKE spot / preemptible VM: the preemption notice is an ACPI soft-off; GKE's kubelet
    runs a graceful node shutdown of 30 s, 15 s for ordinary pods (cloud.google.com
    kubernetes-engine/docs/concepts/spot-vms, 'Termination and graceful shutdown'). The
    VM is then TERMINATED but still exists: the CCM taints the node shutdown."""
    status = dict(traces.SHUTDOWN_POD_STATUS)
    return [_shutting_down(), _kubelet_pods(status), *death("gce", "previous", opts, stopped=True)]


def aks_evict(opts: Options) -> list[Write]:
    """AKS spot node pool: a Preempt scheduled event (at least 30 s ahead) makes node
    auto-drain taint the node remediator.kubernetes.azure.com/unschedulable, cordon and
    drain it (learn.microsoft.com azure/aks/node-auto-drain); with the Delete eviction
    policy the VM is deleted and the CCM removes its Node (azure/aks/spot-node-pool)."""
    actor = "aks-node-auto-drain"
    return [
        Write(actor, "PATCH node", ({"taint_added": taint(AKS_REMEDIATOR, "NoSchedule")},)),
        cordon(actor),
        evict(actor),
        *death("azure-vmss", AFTER_NOTICE, opts),
    ]


def instance_lost(opts: Options) -> list[Write]:
    """The instance vanishes with no notice: only the node lifecycle controller and the
    CCM ever write anything."""
    return death("ec2", "previous", opts)


def out_of_service(opts: Options) -> list[Write]:
    """Kubernetes non-graceful node shutdown (kubernetes.io docs 'Non-graceful node
    shutdown handling'): the node went down without a graceful shutdown, is NotReady, and
    an administrator, or NTH with enableOutOfServiceTaint, adds
    node.kubernetes.io/out-of-service=nodeshutdown:NoExecute (NTH pkg/node/node.go
    TaintOutOfService). The taint-eviction controller then deletes the pods and the pod
    garbage collector force-deletes them (pkg/controller/podgc/gc_controller.go
    gcTerminating): both are the real kube-controller-manager here."""
    tainter = "administrator or aws-node-termination-handler"
    add = {"taint_added": taint(OUT_OF_SERVICE, "NoExecute", OUT_OF_SERVICE_VALUE)}
    return [
        instance_dies("ec2", "previous"),
        *node_lifecycle_unknown(opts),
        Write(tainter, "PUT node", (add,)),
    ]


def node_pressure(opts: Options) -> list[Write]:
    """kubelet eviction manager (pkg/kubelet/eviction/eviction_manager.go, helpers.go):
    MemoryPressure=True on the node, then the chosen pod Failed/Evicted with a
    DisruptionTarget TerminationByKubelet; the node stays."""
    cond = {
        "type": "MemoryPressure",
        "status": "True",
        "reason": "KubeletHasInsufficientMemory",
        "message": "kubelet has insufficient memory available",
    }
    return [
        Write(KUBELET, "PUT node/status", ({"conditions": [cond]},)),
        _kubelet_pods(dict(traces.NODE_PRESSURE_POD_STATUS)),
    ]


def critical_preemption(opts: Options) -> list[Write]:
    """kubelet critical pod admission (pkg/kubelet/preemption/preemption.go
    evictPodsToFreeRequests): the preempted pod is Failed/Preempting with a
    DisruptionTarget TerminationByKubelet. Not a node shutdown: the node stays Ready."""
    return [_kubelet_pods(dict(traces.PREEMPTING_POD_STATUS))]


PLANS: Final[dict[str, Callable[[Options], list[Write]]]] = {
    "nth": plans_aws.nth_spot_itn,
    "rebalance": plans_aws.nth_rebalance,
    "asg": plans_aws.nth_asg,
    "scheduled-maintenance": plans_aws.nth_scheduled_maintenance,
    "state-change": plans_aws.nth_state_change,
    "mng-rebalance": plans_aws.mng_rebalance,
    "karpenter": karpenter_interruption,
    "karpenter-drift": karpenter_drift,
    "karpenter-drift-aborted": karpenter_drift_aborted,
    "ca-scale-down": ca_scale_down,
    "out-of-service": out_of_service,
    "gke-preempt": gke_preempt,
    "aks-evict": aks_evict,
    "loss": instance_lost,
    "shutdown": kubelet_shutdown,
    "node-pressure": node_pressure,
    "critical-preemption": critical_preemption,
}
SIGNALS: Final[tuple[str, ...]] = tuple(PLANS)
# Signals whose component refuses a node when a pod opts out (annotation, value).
OPT_OUTS: Final[dict[str, tuple[str, str]]] = {
    "karpenter-drift": (KARPENTER_DO_NOT_DISRUPT, "true"),
    "karpenter-drift-aborted": (KARPENTER_DO_NOT_DISRUPT, "true"),
    "ca-scale-down": (CA_SAFE_TO_EVICT, "false"),
}
# Node labels (and taints) a node of that provider carries; ``inject`` adds them first.
PROVIDER_LABELS: Final[dict[str, dict[str, str]]] = {
    "gke-preempt": {
        "cloud.google.com/gke-spot": "true",
        "cloud.google.com/gke-provisioning": "spot",
    },
    "aks-evict": {"kubernetes.azure.com/scalesetpriority": "spot"},
}


def plan(signal: str, opts: Options | None = None) -> list[Write]:
    if signal not in PLANS:
        raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    return PLANS[signal](opts or Options())


__all__ = ["MEMORY_PRESSURE", "PLANS", "SIGNALS", "plan"]
