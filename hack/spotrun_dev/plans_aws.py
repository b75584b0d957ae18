"""Plans of the AWS components: the Node Termination Handler and EKS managed node groups.

Transcribed from aws/aws-node-termination-handler (commit 62a8761d):
- pkg/interruptionevent/draincordon/handler.go HandleEvent: PreDrainTask (the taint), then
  cordonNode (cordon only) for a rebalance recommendation unless
  enableSqsTerminationDraining or enableRebalanceDraining, else cordonAndDrainNode.
- pkg/node/node.go CordonAndDrain: MaybeMarkForExclusionFromLoadBalancers (a strategic
  merge PATCH of one label), Cordon (kubectl drain.RunCordonOrUncordon: a PATCH of
  spec.unschedulable), then drain.RunNodeDrain (Eviction API, Force, GracePeriodSeconds
  -1 = each pod's own, Timeout = nodeTerminationGracePeriod 120 s: getDrainHelper).
- pkg/node/node.go addTaint: a GET then an UPDATE (PUT) of the Node with one more taint
  {key, value=event id[:63], effect=taintEffect (NoSchedule)}; no timeAdded.
- NTH never deletes a Node; the instance terminates at the end of the notice.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from spotrun_dev.plans import (
    AFTER_NOTICE,
    EXCLUDE_LB_LABEL,
    Options,
    Write,
    cordon,
    death,
    evict,
    hex_of,
    sha256_hex,
    taint,
    taint_value,
    unix,
)

NTH: Final = "aws-node-termination-handler"
NTH_SPOT_ITN: Final = "aws-node-termination-handler/spot-itn"
NTH_REBALANCE: Final = "aws-node-termination-handler/rebalance-recommendation"
NTH_ASG: Final = "aws-node-termination-handler/asg-lifecycle-termination"
NTH_SCHEDULED: Final = "aws-node-termination-handler/scheduled-maintenance"
NTH_EVENT_ID_LABEL: Final = "aws-node-termination-handler/event-id"
NTH_ACTION_LABEL: Final = "aws-node-termination-handler/action"
NTH_ACTION_TIME_LABEL: Final = "aws-node-termination-handler/action-time"
NTH_LB_VALUE: Final = "aws-node-termination-handler"
SPOT_NOTICE_SECONDS: Final = 120  # EC2 spot interruption notice


def spot_itn_event_id(opts: Options) -> str:
    """IMDS: ``spot-itn-`` + sha256 of the instance-action document (spotitn monitor);
    queue: ``spot-itn-event-`` + hex of the EventBridge event id (sqsevent)."""
    when = (opts.now + dt.timedelta(seconds=SPOT_NOTICE_SECONDS)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if opts.mode == "queue":
        return f"spot-itn-event-{hex_of(_event_bridge_id(opts))}"
    return f"spot-itn-{sha256_hex(f'{{terminate {when}}}{opts.seed}')}"


def rebalance_event_id(opts: Options) -> str:
    if opts.mode == "queue":
        return f"rebalance-recommendation-event-{hex_of(_event_bridge_id(opts))}"
    return f"rebalance-recommendation-{sha256_hex(f'{{{opts.now.isoformat()}}}{opts.seed}')}"


def asg_event_id(opts: Options) -> str:
    return f"asg-lifecycle-term-{hex_of(_event_bridge_id(opts))}"


def scheduled_event_id(opts: Options) -> str:
    """EC2 scheduled events carry their own id (``instance-event-`` + 17 hex)."""
    return f"instance-event-{opts.seed[:17]}"


def _event_bridge_id(opts: Options) -> str:
    s = opts.seed
    return f"{s[:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:32]}"


def nth_event(reason: str, message: str, obj: str = "event", etype: str = "Normal") -> Write:
    """A Kubernetes Event NTH records (emitKubernetesEvents: true in nth-values.yaml):
    pkg/observability/k8s-events.go Emit, source component aws-node-termination-handler,
    on the Node (namespace default) or, for PodEviction, on each pod."""
    change = {"event": {"type": etype, "reason": reason, "message": message}}
    return Write(NTH, "POST event", (change,), obj=obj)


def _notice_time(opts: Options) -> str:
    return (opts.now + dt.timedelta(seconds=SPOT_NOTICE_SECONDS)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _instance_id(opts: Options) -> str:
    return f"i-{opts.seed[:17]}"


PRE_DRAIN = nth_event("PreDrain", "Pre-drain task successfully executed")
CORDONED = nth_event("Cordon", "Node successfully cordoned")
DRAINED = nth_event("CordonAndDrain", "Node successfully cordoned and drained")
POST_DRAIN = nth_event("PostDrain", "Post-drain task successfully executed")
# pkg/node/node.go getDrainHelper: Timeout = nodeTerminationGracePeriod (120 s by default)
# bounds the whole drain (evictions retried while a PodDisruptionBudget answers 429, then
# the wait for the pods to be gone).
NTH_DRAIN_TIMEOUT_SECONDS: Final = 120


def drain_error(error: str) -> Write:
    """draincordon/handler.go cordonAndDrainNode when the drain returns an error (a budget
    refused evictions until the timeout): the CordonAndDrainError Warning
    (pkg/observability/k8s-events.go CordonAndDrainErrReason, CordonAndDrainErrMsgFmt);
    HandleEvent then cancels the event and NTH goes on. The instance ends at the notice's
    time all the same."""
    message = f"There was a problem while trying to cordon and drain the node: {error}"
    return nth_event("CordonAndDrainError", message, etype="Warning")


POD_EVICTION = nth_event("PodEviction", "Pod evicted due to node drain (node {node})", "pod-event")


def nth_taint(key: str, event_id: str) -> Write:
    return Write(
        NTH, "PUT node", ({"taint_added": taint(key, "NoSchedule", taint_value(event_id))},)
    )


def nth_cordon_and_drain(opts: Options, post_drain: bool = False) -> list[Write]:
    """node.go CordonAndDrain: label (when excludeFromLoadBalancers), cordon, a PodEviction
    Event per pod, the drain; then the CordonAndDrain Event (draincordon/handler.go
    cordonAndDrainNode) and, for queue events, the PostDrain Event."""
    out: list[Write] = []
    if opts.exclude_from_lb:
        label = {"label_added": {"key": EXCLUDE_LB_LABEL, "value": NTH_LB_VALUE}}
        out.append(Write(NTH, "PATCH node", (label,)))
    tail = [POST_DRAIN] if post_drain else []
    return [*out, cordon(NTH), POD_EVICTION, evict(NTH), DRAINED, *tail]


def nth_spot_itn(opts: Options) -> list[Write]:
    """The Event first (cmd/node-termination-handler.go, when the event is picked up), then
    the PreDrainTask's taint and its PreDrain Event, then CordonAndDrain."""
    queue = opts.mode == "queue"
    if queue:
        what = f"Spot Interruption notice for instance {_instance_id(opts)} was sent at "
    else:
        what = "Spot ITN received. Instance will be interrupted at "
    return [
        nth_event("SpotInterruption", f"{what}{_notice_time(opts)} \n"),
        nth_taint(NTH_SPOT_ITN, spot_itn_event_id(opts)),
        PRE_DRAIN,
        *nth_cordon_and_drain(opts, post_drain=queue),
        *death("ec2", AFTER_NOTICE, opts),
    ]


def nth_rebalance(opts: Options) -> list[Write]:
    """IMDS: taint and cordon, nothing else. Queue (enableSqsTerminationDraining): taint,
    then the whole CordonAndDrain. The instance is not terminated by NTH either way."""
    taint_w = nth_taint(NTH_REBALANCE, rebalance_event_id(opts))
    if opts.mode == "imds":
        what = "Rebalance recommendation received. Instance will be cordoned at "
        event = nth_event("RebalanceRecommendation", f"{what}{_notice_time(opts)} \n")
        return [event, taint_w, PRE_DRAIN, cordon(NTH), CORDONED]
    what = f"Rebalance recommendation event received. Instance {_instance_id(opts)} will be "
    event = nth_event("RebalanceRecommendation", f"{what}cordoned at {_notice_time(opts)} \n")
    return [event, taint_w, PRE_DRAIN, *nth_cordon_and_drain(opts, post_drain=True)]


def nth_asg(opts: Options) -> list[Write]:
    """ASG lifecycle termination (sqsevent/asg-lifecycle-event.go): taint, drain, then
    CompleteLifecycleAction lets the ASG terminate the instance right away."""
    what = "ASG Lifecycle Termination event received. Instance will be interrupted at "
    return [
        nth_event("ASGLifecycle", f"{what}{_notice_time(opts)} \n"),
        nth_taint(NTH_ASG, asg_event_id(opts)),
        PRE_DRAIN,
        *nth_cordon_and_drain(opts, post_drain=True),
        *death("ec2-autoscaling", "previous", opts),
    ]


def nth_scheduled_maintenance(opts: Options) -> list[Write]:
    """An IMDS scheduled ``instance-stop`` event (scheduledevent/scheduled-event-monitor.go
    uncordonAfterRebootPreDrain): event-id label, taint, action and action-time labels,
    then CordonAndDrain. The instance stops at the event's NotBefore: the CCM taints the
    stopped node ``node.cloudprovider.kubernetes.io/shutdown`` instead of deleting it."""
    event_id = scheduled_event_id(opts)
    labels = [
        Write(NTH, "PATCH node", ({"label_added": {"key": NTH_EVENT_ID_LABEL, "value": event_id}},))
    ]
    marks = [
        Write(
            NTH,
            "PATCH node",
            ({"label_added": {"key": NTH_ACTION_LABEL, "value": "UncordonAfterReboot"}},),
        ),
        Write(
            NTH,
            "PATCH node",
            ({"label_added": {"key": NTH_ACTION_TIME_LABEL, "value": unix(opts.now)}},),
        ),
    ]
    when = _notice_time(opts)
    what = f"instance-stop will occur between {when} and {when} because The instance is "
    return [
        nth_event("ScheduledEvent", f"{what}scheduled to be stopped\n"),
        *labels,
        nth_taint(NTH_SCHEDULED, event_id),
        *marks,
        PRE_DRAIN,
        *nth_cordon_and_drain(opts),
        *death("ec2", AFTER_NOTICE, opts, stopped=True),
    ]


def nth_state_change(opts: Options) -> list[Write]:
    """EC2 instance state-change (stopping, stopped, shutting-down, terminated) from the
    queue (sqsevent/ec2-state-change-event.go): no PreDrainTask, so no taint; the drain
    races the instance, which is already on its way out."""
    what = f"EC2 State Change event received. Instance {_instance_id(opts)} went into "
    event = nth_event("StateChange", f"{what}stopping at {_notice_time(opts)} \n")
    return [event, *nth_cordon_and_drain(opts, post_drain=True), *death("ec2", "previous", opts)]


def mng_rebalance(opts: Options) -> list[Write]:
    """EKS managed node group, spot capacity: on a rebalance recommendation the ASG's
    Capacity Rebalancing launches a replacement; once it is Ready, EKS cordons and drains
    the old node (no NTH taint), then the ASG terminates it (Amazon EKS User Guide,
    managed-node-groups.html, 'Spot' capacity type; ec2spotworkshops.com
    using_ec2_spot_instances_with_eks/040_eksmanagednodegroupswithspot/spotlifecycle)."""
    actor = "eks-managed-node-group"
    return [cordon(actor), evict(actor), *death("ec2-autoscaling", "previous", opts)]
