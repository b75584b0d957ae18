"""What only the watch streams know, kept for the reconciles: the last state of every
node (deleted ones too, for a while), the last state of each run's pods (kept after their
deletion), which spec generations the apiserver refused, and which events were announced.
Thread-safe, bounded in time and size."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from spotrun_operator.facts.signals import (
    INTERRUPTION_TAINTS,
    NodeInfo,
    going,
    node_info,
    schedulable,
)
from spotrun_operator.model.plan import Rejected

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class NodeChange:
    """What a node event changed. ``matters``: for the runs with pods on the node (a
    taint, Ready, deletion). ``opened``: the node may now take a pod it could not before,
    so the runs waiting for capacity should look."""

    matters: bool
    opened: bool


@dataclass(frozen=True)
class _Seen:
    at: float
    node: NodeInfo


class Memory:
    """Thread-safe knowledge from the watch streams, bounded in time and size.

    Every reconcile reads the nodes and the interrupted ones, and every node event writes
    one: reads are answered from a snapshot made again only when a node's state changed
    (not at each heartbeat), and old entries are pruned every ``PRUNE_SECONDS``, so
    neither costs a pass over the whole fleet per event or per reconcile."""

    PRUNE_SECONDS = 10.0

    def __init__(self, ttl_seconds: float = 3600.0, max_items: int = 10000) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _Seen] = {}
        self._nodes_view: Mapping[str, NodeInfo] | None = None
        self._interrupted: set[str] = set()
        self._pruned_at = float("-inf")
        self._pods: dict[Key, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._announced: dict[str, float] = {}
        # (namespace, run) -> (when, (uid, generation), why the apiserver refused its spec)
        self._rejected: dict[Key, tuple[float, tuple[str, int], Rejected]] = {}
        self.ttl = ttl_seconds
        self.max_items = max_items

    def observe_node(self, body: Mapping[str, Any], deleted: bool) -> NodeChange:
        """Record a node's state; whether what matters to the runs on it changed (a taint,
        Ready, or deletion: they should look now), and whether it may now take a pod it
        could not take before (:func:`opens_capacity`)."""
        info = node_info(body, exists=not deleted)
        now = time.monotonic()
        with self._lock:
            old = self._nodes.get(info.name)
            self._nodes[info.name] = _Seen(now, info)
            if old is None or old.node != info:
                self._nodes_view = None
                if going(info):
                    self._interrupted.add(info.name)
                else:
                    self._interrupted.discard(info.name)
            self._prune(now)
        if old is None:
            matters = (
                deleted or bool(set(info.taints) & set(INTERRUPTION_TAINTS)) or info.ready != "True"
            )
        else:
            o = old.node
            matters = (o.exists, o.taints, o.ready, o.ready_message) != (
                info.exists,
                info.taints,
                info.ready,
                info.ready_message,
            )
        return NodeChange(matters, opens_capacity(old.node if old else None, info))

    def nodes(self) -> Mapping[str, NodeInfo]:
        """The last known state of each node (read-only, shared by reconciles)."""
        with self._lock:
            if self._nodes_view is None:
                self._nodes_view = MappingProxyType({k: v.node for k, v in self._nodes.items()})
            return self._nodes_view

    def interrupted_nodes(self) -> list[str]:
        """Nodes a new attempt must not land on: their last known state is :func:`going`."""
        with self._lock:
            return sorted(self._interrupted)

    def remember_pod(self, namespace: str, run: str, body: Mapping[str, Any]) -> None:
        """The last state the watch saw of a pod of ``run`` (kept after its deletion)."""
        uid = str((body.get("metadata") or {}).get("uid"))
        with self._lock:
            self._pods.setdefault((namespace, run), {})[uid] = (time.monotonic(), dict(body))

    def seen_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for _, p in self._pods.get((namespace, run), {}).values()]

    def forget_run(self, namespace: str, run: str) -> None:
        with self._lock:
            self._pods.pop((namespace, run), None)
            self._rejected.pop((namespace, run), None)

    def reject(self, run: Mapping[str, Any], rejected: Rejected) -> None:
        """Remember that the objects built from this generation of ``run`` were refused."""
        key, version = _generation(run)
        with self._lock:
            self._rejected[key] = (time.monotonic(), version, rejected)
            self._prune(time.monotonic())

    def rejection(self, run: Mapping[str, Any]) -> Rejected | None:
        """Why this generation of ``run`` was refused (None when it was not)."""
        key, version = _generation(run)
        with self._lock:
            seen = self._rejected.get(key)
        return seen[2] if seen and seen[1] == version else None

    def first_time(self, key: str) -> bool:
        """True once per key (events announced once per process)."""
        with self._lock:
            if key in self._announced:
                return False
            self._announced[key] = time.monotonic()
            return True

    def _prune(self, now: float) -> None:
        while len(self._nodes) > self.max_items:
            self._forget_node(min(self._nodes, key=lambda n: self._nodes[n].at))
        if now - self._pruned_at < min(self.PRUNE_SECONDS, max(self.ttl, 0.0)):
            return
        self._pruned_at = now
        cutoff = now - self.ttl
        # A live node stays known however long it goes unchanged (elastic runs count the
        # fleet from here); a deleted one is remembered for ``ttl``.
        for name in [n for n, s in self._nodes.items() if s.at < cutoff and not s.node.exists]:
            self._forget_node(name)
        for key, pods in list(self._pods.items()):
            for uid in [u for u, (t, _) in pods.items() if t < cutoff]:
                del pods[uid]
            if not pods:
                del self._pods[key]
        for k in [k for k, t in self._announced.items() if t < cutoff]:
            del self._announced[k]
        for key in [k for k, r in self._rejected.items() if r[0] < cutoff]:
            del self._rejected[key]

    def _forget_node(self, name: str) -> None:
        del self._nodes[name]
        self._interrupted.discard(name)
        self._nodes_view = None


def _generation(run: Mapping[str, Any]) -> tuple[Key, tuple[str, int]]:
    meta = run["metadata"]
    key = (str(meta["namespace"]), str(meta["name"]))
    return key, (str(meta.get("uid")), int(meta.get("generation") or 1))


def opens_capacity(old: NodeInfo | None, new: NodeInfo) -> bool:
    """``new`` may take a pod that ``old`` could not: the node is schedulable and not going
    away, and it is new, or what placement reads of it changed (it became Ready or was
    uncordoned, a taint went, its GPUs were advertised, a label came). A run waiting for
    capacity looks again at once instead of at its next poll."""
    if not schedulable(new) or going(new):
        return False
    if old is None:
        return True
    return _placement_view(old) != _placement_view(new)


def _placement_view(node: NodeInfo) -> tuple[Any, ...]:
    usable = schedulable(node) and not going(node)
    return (usable, node.hard_taints, node.gpus, node.labels)
