"""The Auto Scaling group of the real spot nodes: a lost node is replaced after a delay.

On EKS a reclaimed spot node is not replaced at once: the ASG (or Karpenter) notices the
terminated instance, launches another, and the instance boots, bootstraps and joins before
its kubelet reports Ready; then its pods' images must be present or pulled. The local
cluster would hide all of that (a real node joins here in ~3 s with every image imported),
so a replacement joins only ``delay_seconds`` after the group first ran short. The
delay stands for the whole launch, from the request to a Ready node, so the harness's
own node start (a containerd root, containerd, the kubelet, its registration: several
seconds on this machine) happens inside it: the instance starts booting when the group
runs short and registers with ``LAUNCHING_TAINT``, which the group removes once the delay
is over and the node is Ready. Until then neither the scheduler nor the operator can
place a pod there (the operator places only where every NoSchedule taint is tolerated),
and the node's pods, and its pulls, start when capacity arrives, as on EKS. Its
images are either

- ``preloaded``: its containerd starts from the golden root holding every image, as a
  pre-baked AMI or a Bottlerocket data-volume snapshot gives, or
- ``registry``: its containerd holds only the sandbox image, as a stock EKS AMI; the
  kubelet pulls the trainer image from the harness's OCI registry (the CNCF distribution
  registry built from its Go module, ``node_services.start_registry``) through containerd;
- ``lazy``: as ``registry``, but containerd mounts the trainer's layers over the registry
  through stargz-snapshotter and fetches what is read (node_lazy.py), as SOCI does on EKS.

The group replaces a terminated instance (an ASG keeping its count) and, given the
namespace of the workload it serves, also launches for that workload's pods the scheduler
cannot place (Cluster Autoscaler's scale-up, Karpenter's provisioning: docs/eks.md runs
Cluster Autoscaler): a pending pod counts from the pass that first sees it, so a workload
that asks for its replacement at a spot notice gets it one delay after the notice, and
one that asks only once its pods are recreated gets it that much later. It launches no
more than one node beyond its count (a node group's maximum), and takes a node it just
launched as the answer to the pods that were pending for ``SETTLE_SECONDS`` (the scheduler
binds them in that time), as Cluster Autoscaler counts upcoming nodes and Karpenter
in-flight NodeClaims.

The default delay, 90 s, is our pick for a GPU instance from request to Ready: AWS
documents no launch-to-Ready figure; third-party measurements put a small Linux EKS node
at about 30 s from launch to schedulable and a Karpenter-provisioned node at minutes, and a
p4d.24xlarge adds its NVIDIA driver and EFA initialisation. Every bench and test states the
delay and the image mode it ran with (``CapacitySettings.describe``);
``SPOTRUN_PROVISIONING_DELAY_SECONDS`` and ``SPOTRUN_NODE_IMAGES`` set them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from spotrun_dev import (
    example_images,
    images,
    node_config,
    node_images,
    real_interrupt,
    realnodes,
)
from spotrun_dev.waiting import ClusterError, wait_for

log = logging.getLogger("spotrun_dev.provisioner")

ImageMode = Literal["preloaded", "registry", "lazy"]
IMAGE_MODES: Final[tuple[ImageMode, ...]] = ("preloaded", "registry", "lazy")
DEFAULT_DELAY_SECONDS: Final = 90.0
ENV_DELAY: Final = "SPOTRUN_PROVISIONING_DELAY_SECONDS"
ENV_IMAGES: Final = "SPOTRUN_NODE_IMAGES"
POLL_SECONDS: Final = 0.5
SETTLE_SECONDS: Final = 10.0
# How long past its join time a booting instance may take to turn Ready before the group
# gives up on it (the harness failing, not the cloud: a ClusterError).
BOOT_TIMEOUT_SECONDS: Final = 120.0
# A booting instance's node is not the group's capacity yet (the harness's, not a real
# component's: on EKS the node does not exist before it joins).
LAUNCHING_TAINT: Final = {"key": "spotrun.dev/launching", "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True)
class CapacitySettings:
    delay_seconds: float = DEFAULT_DELAY_SECONDS
    images: ImageMode = "preloaded"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CapacitySettings:
        raw = env.get(ENV_DELAY, "")
        try:
            delay = float(raw) if raw else DEFAULT_DELAY_SECONDS
        except ValueError:
            raise ClusterError(f"{ENV_DELAY}={raw!r} is not a number of seconds") from None
        if delay < 0:
            raise ClusterError(f"{ENV_DELAY}={raw!r} must be at least 0")
        named = env.get(ENV_IMAGES, "preloaded")
        mode = next((m for m in IMAGE_MODES if m == named), None)
        if mode is None:
            raise ClusterError(f"{ENV_IMAGES}={named!r}: use one of {', '.join(IMAGE_MODES)}")
        return cls(delay, mode)

    def describe(self) -> str:
        return f"provisioning delay {self.delay_seconds:g}s, images {self.images}"


@dataclass
class GroupState:
    """What the group decides from (pure): when it first ran short, and launches so far."""

    short_since: float | None = None
    launches: list[tuple[float, str]] = field(default_factory=list)  # (joined at, node)
    booting: Boot | None = None  # the instance launched and not joined yet (one at a time)


@dataclass(frozen=True)
class Boot:
    """An instance of the group that is booting: its node and when it may join."""

    node: str
    joins_at: float  # when the group's delay is over: the node becomes its capacity


def boot_due(
    state: GroupState, healthy: int, wanted: int, now: float, delay: float
) -> float | None:
    """When the instance that must start booting now joins, or None: one boots as soon as
    the group runs short (its boot is part of the delay) and joins ``delay`` after that,
    one instance at a time."""
    since = short_since(state, healthy, wanted, now)
    return None if state.booting is not None or since is None else since + delay


def join_due(boot: Boot, now: float, ready: bool) -> bool:
    """The booting instance joins once its delay is over and its node is Ready; a boot that
    is not Ready long after its join time is the harness failing."""
    if now >= boot.joins_at and ready:
        return True
    if now > boot.joins_at + BOOT_TIMEOUT_SECONDS:
        raise ClusterError(f"{boot.node} was not Ready {BOOT_TIMEOUT_SECONDS:g}s past its join")
    return False


def target_size(wanted: int, healthy: int, unschedulable: int) -> int:
    """Nodes the group wants now: its count, or enough for the pods the scheduler cannot
    place (one node each: the run's pods take a whole node), at most one beyond its count."""
    return min(wanted + 1, max(wanted, healthy + unschedulable))


def short_since(state: GroupState, healthy: int, wanted: int, now: float) -> float | None:
    """Since when the group has been short of ``wanted`` healthy nodes. The clock restarts
    with each join, as each instance of a group is launched and boots on its own; a group
    that is whole again forgets it ran short."""
    if healthy >= wanted:
        state.short_since = None
    elif state.short_since is None:
        state.short_since = now
    return state.short_since


class Provisioner:
    """Keeps ``wanted`` healthy real spot nodes, each replacement after the delay (a thread
    of the bench or test that loses nodes; it is the only writer of the fleet's state while
    it runs)."""

    def __init__(
        self,
        core: client.CoreV1Api,
        wanted: int,
        settings: CapacitySettings,
        clock: Callable[[], float] = time.monotonic,
        namespace: str | None = None,
    ) -> None:
        self.core, self.wanted, self.settings, self.clock = core, wanted, settings, clock
        self.namespace = namespace  # whose unschedulable pods the group launches for
        self.group = GroupState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> Provisioner:
        if self.settings.images != "preloaded":  # the tag serves this mode's layers
            with images.machine_lock():
                example_images.push_node_pulled(lazy=self.settings.images == "lazy")
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=180)
        self.settle_boot()
        if self.error is not None and exc[0] is None:
            raise ClusterError(f"the provisioner failed: {self.error}") from self.error

    def settle_boot(self) -> None:
        """A group that stops leaves no half-launched instance behind: the one still
        booting joins now (its delay no longer times anything), or is removed if it never
        turns Ready. A node left with LAUNCHING_TAINT would count as healthy to
        ``ensure_real_nodes`` and take no pod."""
        boot, self.group.booting = self.group.booting, None
        if boot is None:
            return
        node = booting_node(realnodes.FleetState.load(), boot)
        if node is None:
            return

        def joined() -> bool:
            ready = realnodes.all_ready(self.core, [node])
            return ready and remove_taint(self.core, boot.node, LAUNCHING_TAINT["key"])

        try:
            wait_for(f"{boot.node} to join", joined, timeout=BOOT_TIMEOUT_SECONDS)
        except ClusterError:
            log.info("booting instance %s never joined: removing it", boot.node)
            realnodes.remove_node(self.core, realnodes.FleetState.load(), boot.node)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_SECONDS):
                self.step()
        except BaseException as e:  # surfaced on exit: a thread cannot fail the test
            log.exception("provisioner stopped")
            self.error = e

    def step(self) -> None:
        """One pass: a booting instance joins when due; another boots when the group runs
        short; terminated instances are cleared."""
        state = realnodes.FleetState.load()
        spot = {n: r for n, r in state.nodes.items() if r.role == "spot"}
        dead = [n for n, r in spot.items() if not realnodes.healthy(r)]
        healthy = len(spot) - len(dead)  # a booting instance counts: it is on its way
        if self.group.booting is not None:
            self.join_when_due(state, self.group.booting)
        target = target_size(self.wanted, healthy, self.unschedulable())
        joins_at = boot_due(self.group, healthy, target, self.clock(), self.settings.delay_seconds)
        if joins_at is not None:
            self.group.booting = Boot(self.launch(state), joins_at)
        for name in dead:
            # The cloud controller manager deletes the Node of a terminated instance once
            # the node lifecycle controller marked it (real_interrupt.instance_dies).
            if real_interrupt.node_ready(self.core, name) is not True:
                log.info("instance of %s terminated and its node marked: removing it", name)
                realnodes.remove_node(self.core, state, name)

    def join_when_due(self, state: realnodes.FleetState, boot: Boot) -> None:
        """The booting instance becomes capacity: its launching taint goes once its delay is
        over and it is Ready (the group forgets it ran short: the clock restarts)."""
        node = booting_node(state, boot)
        if node is None:  # removed meanwhile (a failed boot): the group boots another
            log.info("booting instance %s is gone", boot.node)
            self.group.booting = None
            return
        now = self.clock()  # readiness is read only once the instance may join
        ready = now >= boot.joins_at and realnodes.all_ready(self.core, [node])
        if not join_due(boot, now, ready):
            return
        if not remove_taint(self.core, boot.node, LAUNCHING_TAINT["key"]):
            return  # the Node changed under us: again on the next pass
        self.group.launches.append((self.clock(), boot.node))
        self.group.booting = self.group.short_since = None
        log.info("replacement %s joined (%s)", boot.node, self.settings.describe())

    def describe(self) -> str:
        """What the group does, for the line every test and bench prints."""
        serves = f", launches for unschedulable pods of {self.namespace}" if self.namespace else ""
        return (f"{self.settings.describe()} (a replacement boots within it), replaces "
                f"terminated instances{serves}")  # fmt: skip

    def unschedulable(self) -> int:
        """The served namespace's pods the scheduler found no node for (0 without one, while
        an instance boots and within SETTLE_SECONDS of the last join: those pods are the
        booting instance's, or about to be bound to the one that joined)."""
        last = self.group.launches[-1][0] if self.group.launches else None
        settling = last is not None and self.clock() - last < SETTLE_SECONDS
        if self.namespace is None or self.group.booting is not None or settling:
            return 0
        pods = self.core.list_namespaced_pod(self.namespace, field_selector="status.phase=Pending")
        return sum(1 for p in pods.items if unschedulable_pod(p))

    def launch(self, state: realnodes.FleetState) -> str:
        """A new spot node with this group's image mode, registering with LAUNCHING_TAINT;
        returns its name once its processes started (it turns Ready during the delay)."""
        built = realnodes.built_images()
        pause = built["pause"]
        preloaded = self.settings.images == "preloaded"
        golden = node_images.golden_root(list(built.values())) if preloaded else None
        imports = () if preloaded else (pause.archive,)
        lazy = self.settings.images == "lazy"
        record = realnodes.add_node(
            self.core, state, golden, pause.ref, "spot", imports, [LAUNCHING_TAINT], lazy=lazy
        )
        # Same image set and config as its peers: ensure_real_nodes must not replace it.
        record.images = node_images.golden_key(list(built.values()))
        record.config = node_config.config_key(pause.ref)
        state.save()
        name = next(n for n, r in state.nodes.items() if r is record)
        log.info("replacement %s booting (%s)", name, self.settings.describe())
        return name


def booting_node(state: realnodes.FleetState, boot: Boot) -> node_config.RealNode | None:
    """The booting instance's node, None once the fleet no longer holds it."""
    record = state.nodes.get(boot.node)
    return None if record is None else record.node(boot.node)


def remove_taint(core: client.CoreV1Api, name: str, key: str) -> bool:
    """Drop the taint ``key`` from the Node, guarded by its resourceVersion (the node
    lifecycle controller edits the same list); False when the Node changed meanwhile."""
    node = core.read_node(name)
    kept = [t for t in node.spec.taints or [] if t.key != key]
    taints = [core.api_client.sanitize_for_serialization(t) for t in kept]
    body = {"metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints}}  # fmt: skip
    try:
        core.patch_node(name, body)
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


def unschedulable_pod(pod: client.V1Pod) -> bool:
    """The scheduler's verdict on a pod it could not bind (PodScheduled False,
    Unschedulable), what Cluster Autoscaler and Karpenter act on."""
    if pod.spec.node_name or pod.metadata.deletion_timestamp:
        return False
    return any(
        c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
        for c in pod.status.conditions or []
    )
