"""Interruptions of real nodes: the API side as the real components do it, then the
instance itself.

On a real node nothing is played: the Eviction API makes the real kubelet send SIGTERM and
wait the pod's grace period; an instance's death SIGKILLs real processes; the real node
lifecycle controller marks the node NotReady when heartbeats stop. spotrun-dev adds only
what the cloud does: the instance dying, the cloud controller manager deleting the Node
of a terminated instance, and the ASG's replacement (``realnodes.ensure_real_nodes``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import inject, plans, plans_aws, plans_k8s, realnodes
from spotrun_dev.fleet_state import wait_node_gone
from spotrun_dev.waiting import ClusterError, wait_for

log = logging.getLogger("spotrun_dev.real_interrupt")
# EC2 ends a spot instance two minutes after its interruption notice.
SPOT_NOTICE_SECONDS = 120.0

RealSignal = Literal["nth", "loss", "shutdown"]
REAL_SIGNALS: tuple[RealSignal, ...] = ("nth", "loss", "shutdown")


def node_ready(core: client.CoreV1Api, name: str) -> bool | None:
    """Ready condition: True/False, None when Unknown or the node is gone."""
    try:
        node = core.read_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    cond = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
    if cond is None or cond.status == "Unknown":
        return None
    return bool(cond.status == "True")


def nth_drain(core: client.CoreV1Api, name: str, drain_timeout: float = 300) -> None:
    """NTH on a spot interruption notice, exactly as ``plans_aws.nth_spot_itn``: the
    taint (a PUT of the Node), the exclude-from-load-balancers label, the cordon, then the
    drain through the Eviction API (the real kubelet gives each pod its own grace period)."""
    inject.run_writes(core, name, inject.component_writes("nth"), drain_timeout)


def nth_notice(core: client.CoreV1Api, name: str) -> bool:
    """NTH on a spot interruption notice where a PodDisruptionBudget may hold the drain
    (the operator trains through the notice): ``nth_drain`` with NTH's own drain timeout
    (``plans_aws.NTH_DRAIN_TIMEOUT_SECONDS``), and on a timeout NTH's CordonAndDrainError
    Warning instead of the CordonAndDrain Event. Returns whether the drain finished."""
    try:
        nth_drain(core, name, plans_aws.NTH_DRAIN_TIMEOUT_SECONDS)
    except ClusterError as exc:
        log.info("NTH's drain of %s gave up: %s", name, exc)
        inject.run_writes(core, name, [plans_aws.drain_error(str(exc))])
        return False
    return True


def karpenter_notice(core: client.CoreV1Api, name: str) -> bool:
    """Karpenter v1 on a spot interruption, without NTH, exactly as
    ``plans_k8s.karpenter_interruption`` up to the instance's end: its registration
    finalizer on the Node (``inject.prepare_node``), the NodeClaim's deletion (the Node's
    deletionTimestamp, held by that finalizer), one PATCH adding the disrupted taint and
    the exclude-from-load-balancers label, then the drain through the Eviction API,
    retried while a PodDisruptionBudget answers 429 (kubernetes-sigs/karpenter
    pkg/controllers/node/termination/terminator/eviction.go: a 429 is requeued), for the
    two minutes EC2 leaves the instance. Returns whether the drain finished; the instance's
    end is :func:`karpenter_terminates`."""
    inject.prepare_node(core, name, "karpenter")
    try:
        inject.run_writes(core, name, inject.component_writes("karpenter"), SPOT_NOTICE_SECONDS)
    except ClusterError as exc:
        log.info("Karpenter's drain of %s did not finish: %s", name, exc)
        return False
    return True


def karpenter_terminates(core: client.CoreV1Api, name: str) -> None:
    """The rest of Karpenter's termination: the instance ends (awaitInstanceTermination),
    then its finalizer goes and the apiserver deletes the Node on that write."""
    realnodes.kill_instance(name)
    *_, finalizer = plans_k8s.karpenter_interruption(plans.Options())
    inject.run_writes(core, name, [finalizer])
    wait_node_gone(core, name)


def nth_rebalance(core: client.CoreV1Api, name: str) -> None:
    """NTH in IMDS mode on a rebalance recommendation, exactly as
    ``plans_aws.nth_rebalance``: its Event, the taint (a PUT of the Node), the cordon; no
    drain, and the instance lives on."""
    inject.run_writes(core, name, inject.component_writes("rebalance"))


def instance_dies(
    core: client.CoreV1Api,
    name: str,
    notready_timeout: float = 180,
    left: threading.Event | None = None,
) -> float:
    """The EC2 instance terminates; the node goes NotReady through the node lifecycle
    controller and the cloud controller manager deletes it. Returns seconds to NotReady.

    ``left``, once set, ends the wait for NotReady early and leaves the Node to the ASG's
    replacement (``realnodes.ensure_real_nodes`` removes a dead instance's Node)."""
    started = time.monotonic()
    realnodes.kill_instance(name)
    wait_for(
        f"node {name} to go NotReady (node lifecycle controller)",
        lambda: (left is not None and left.is_set()) or node_ready(core, name) is not True,
        timeout=notready_timeout,
        interval=1,
    )
    notready = time.monotonic() - started
    if left is not None and left.is_set():
        return notready
    # The cloud controller manager's node lifecycle controller deletes a NotReady Node
    # whose instance no longer exists (k8s.io/cloud-provider
    # controllers/nodelifecycle/node_lifecycle_controller.go, MonitorNodes).
    realnodes.cloud_delete(core, name)
    wait_node_gone(core, name)
    return notready


class DyingInstances:
    """Instances whose death (:func:`instance_dies`) runs in the background while a story
    goes on, each with the event that stops waiting for it."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self._dying: list[tuple[threading.Thread, threading.Event]] = []

    def start(self, name: str) -> None:
        left = threading.Event()
        args, kwargs = (self.core, name), {"left": left}
        die = threading.Thread(target=instance_dies, args=args, kwargs=kwargs, daemon=True)
        die.start()
        self._dying.append((die, left))

    def wait(self) -> None:
        """Until the node lifecycle controller saw each NotReady and its Node was deleted."""
        for die, _ in self._dying:
            die.join(timeout=300)
        self._dying.clear()

    def leave(self) -> None:
        """Stop waiting for the node lifecycle controller (a minute each):
        ``realnodes.ensure_real_nodes`` removes a dead instance's Node itself."""
        for die, left in self._dying:
            left.set()
            die.join(timeout=30)
        self._dying.clear()


def interrupt_real(core: client.CoreV1Api, name: str, signal: RealSignal) -> None:
    """Reclaim a real node; the replacement joins with ``realnodes.ensure_real_nodes``."""
    if signal not in REAL_SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(REAL_SIGNALS)}, got {signal!r}")
    log.info("interrupting real node %s: %s", name, signal)
    if signal == "nth":
        nth_drain(core, name)
    elif signal == "shutdown":
        realnodes.power_off(name)
    instance_dies(core, name)
