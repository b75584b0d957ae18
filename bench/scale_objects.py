"""The scale benchmark's objects (its nodes, TrainingRuns and peer PyTorchJobs, kept apart
from every other test's by a label and a taint) and what its watches see, turned into the
timestamps of ``recovery_phases.Recovery``. Used by ``operator_scale.py``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import recovery_phases as rp

from spotrun_dev import fleet, traces

NS = "spotrun-scale"
PEER_NS = "spotrun-scale-peer"
BENCH_LABEL = "spotrun.dev/bench"
BENCH_VALUE = "operator-scale"
NODE_PREFIX = "bench-p4d-"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
REGION = "us-east-1"
ZONE_LABEL = "topology.kubernetes.io/zone"
SIGNALS: tuple[traces.Signal, ...] = ("nth", "karpenter", "asg", "loss", "shutdown")
# The burst measures the operator's throughput: signals the operator sees at once (a silent
# instance loss waits for the node lifecycle controller's heartbeat timeout).
BURST_SIGNALS: tuple[traces.Signal, ...] = ("nth", "karpenter", "asg", "shutdown")
GROUP, VERSION = "spotrun.dev", "v1alpha1"
IMAGE = "spotrun/trainer:dev"
TOLERATIONS = [
    {"key": BENCH_LABEL, "operator": "Equal", "value": BENCH_VALUE, "effect": "NoSchedule"},
    {"key": fleet.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
]
OWN_TAINTS = {BENCH_LABEL, fleet.GPU_RESOURCE}
PLACEMENT = {"nodeSelector": {BENCH_LABEL: BENCH_VALUE}, "tolerations": TOLERATIONS}


# --- objects ----------------------------------------------------------------------------


def bench_node(name: str, zone: str) -> dict[str, Any]:
    """An EKS spot p4d node, kept apart: the bench label and a taint only its pods
    tolerate, and no default-fleet label."""
    node = fleet.build_node(name, "spot", zone, REGION)
    labels = node["metadata"]["labels"]
    labels.pop(fleet.FLEET_LABEL, None)
    labels[BENCH_LABEL] = BENCH_VALUE
    node["spec"]["taints"].append(
        {"key": BENCH_LABEL, "value": BENCH_VALUE, "effect": "NoSchedule"}
    )
    return node


def run_manifest(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": IMAGE,
            "nodes": size,
            "gpusPerNode": 8,
            "capacity": {"type": "spot", "instanceTypes": [fleet.INSTANCE_TYPE]},
            "checkpoint": {"volume": {"claimName": "ckpt"}},
            "maxPreemptions": 10,
            "podTemplate": {"spec": PLACEMENT},
        },
    }


def pytorchjob(name: str, size: int, restart_policy: str, gpus: int) -> dict[str, Any]:
    """A plain Kubeflow PyTorchJob on the bench's nodes: 1 Master + size-1 Workers."""
    limits = {fleet.GPU_RESOURCE: gpus} if gpus else {}
    template = {
        "spec": {
            "containers": [{"name": "pytorch", "image": IMAGE, "resources": {"limits": limits}}],
            **PLACEMENT,
        }
    }
    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": restart_policy, "template": template}
    }
    if size > 1:
        replicas["Worker"] = {
            "replicas": size - 1,
            "restartPolicy": restart_policy,
            "template": template,
        }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": PEER_NS},
        "spec": {"runPolicy": {"backoffLimit": 20}, "pytorchReplicaSpecs": replicas},
    }


# --- what the watches see ---------------------------------------------------------------


# A pod whose containers have all exited (the kubelet sets these phases only then).
TERMINAL_PHASES: tuple[str, ...] = ("Failed", "Succeeded")


@dataclass
class PeerJob:
    """Peer (a) or (b): one plain PyTorchJob."""

    name: str
    size: int
    policy: str = ""
    signal: str = ""
    t_signal: float | None = None
    t_create_call: float | None = None
    t_created: float | None = None
    old_uids: set[str] = field(default_factory=set)
    t_replaced: float | None = None
    t_running: float | None = None
    pods: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (uid, running)


class Observer:
    """Every watch event of the bench's namespaces, turned into timestamps (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sizes: dict[str, int] = {}
        self.recs: dict[str, rp.Recovery] = {}
        self.pods_by_job: dict[str, dict[str, dict[str, Any]]] = {}
        self.t_op_start: float | None = None
        self.t_first_decision: float | None = None
        self.first_created: dict[str, float] = {}
        self.first_running: dict[str, float] = {}
        self.peers: dict[str, PeerJob] = {}
        self.victim_nodes: dict[str, str] = {}  # node -> run
        self.run_status: dict[str, dict[str, Any]] = {}  # run -> its newest status
        # Outcomes the bench did not cause, (run, attempt) -> reason: the cluster itself
        # lost nodes (kwok missing heartbeats under load): the machine is too small.
        self.unprovoked: dict[tuple[str, int], str] = {}

    @staticmethod
    def _visible(rec: rp.Recovery, now: float, why: str) -> None:
        if rec.t_signal is not None and rec.t_visible is None:
            rec.t_visible, rec.visible_by = now, why

    # the bench's nodes: the first trace of a signal
    def on_node(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        with self.lock:
            run = self.victim_nodes.get(meta["name"])
            rec = self.recs.get(run or "")
            if rec is None or rec.t_signal is None or rec.t_visible is not None:
                return
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            taints = {t["key"] for t in spec.get("taints") or []} - OWN_TAINTS
            ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
            why = [
                ("node deleted", kind == "DELETED" or bool(meta.get("deletionTimestamp"))),
                ("node unschedulable", bool(spec.get("unschedulable"))),
                (f"node taint {sorted(taints)}", bool(taints)),
                ("node not Ready", bool(ready) and ready[0]["status"] != "True"),
            ]
            hit = [w for w, yes in why if yes]
            if hit:
                self._visible(rec, now, hit[0])

    # TrainingRuns
    def on_run(self, kind: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        attempts = status.get("attempts") or []
        with self.lock:
            if attempts and self.t_op_start and self.t_first_decision is None:
                self.t_first_decision = now
            rec = self.recs.get(name)
            before = self.run_status.get(name)
            self.run_status[name] = status
            if rec is not None and before is not None and kind == "MODIFIED":
                self._status_write(rec, before, status)
            for a in attempts:
                if not a.get("outcome"):
                    continue
                if rec is None or rec.t_signal is None or a.get("attempt") != rec.attempt:
                    self.unprovoked[(name, int(a.get("attempt") or 0))] = str(a.get("reason"))
                    continue
                if rec.t_detected is None:
                    rec.t_detected = now
                    rec.reason = str(a.get("reason") or "")
                rec.ended_at = rp.parse_time(a.get("endedAt"))
                rec.next_attempt_at = rp.parse_time(a.get("nextAttemptAt"))

    @staticmethod
    def _status_write(rec: rp.Recovery, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Count a status write from the signal until the next attempt reads Running."""
        if rec.t_signal is None or before == after:
            return
        running_next = before.get("phase") == "Running" and before.get("attempt") == rec.attempt + 1
        if not running_next:
            rec.status_writes.append(rp.status_change(before, after, rec.attempt))

    # PyTorchJobs of the runs
    def on_job(self, kind: str, obj: dict[str, Any], now: float) -> None:
        run, attempt = rp.job_attempt(obj["metadata"]["name"])
        with self.lock:
            if attempt == 1 and kind == "ADDED":
                self.first_created.setdefault(run, now)
                if self.t_op_start and self.t_first_decision is None:
                    self.t_first_decision = now
            rec = self.recs.get(run)
            if rec is None or rec.t_signal is None:
                return
            gone = kind == "DELETED" or bool(obj["metadata"].get("deletionTimestamp"))
            if attempt == rec.attempt and gone and rec.t_stopped is None:
                rec.t_stopped = now
            if attempt == rec.attempt + 1 and kind == "ADDED" and rec.t_created is None:
                rec.t_created = now

    # pods of the runs
    def on_pod(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        job = (meta.get("labels") or {}).get(rp.JOB_LABEL, "")
        if not job:
            return
        run, attempt = rp.job_attempt(job)
        running = (obj.get("status") or {}).get("phase") == "Running"
        with self.lock:
            pods = self.pods_by_job.setdefault(job, {})
            if kind == "DELETED":
                pods.pop(meta["name"], None)
            else:
                pods[meta["name"]] = {
                    "node": (obj.get("spec") or {}).get("nodeName") or "",
                    "running": running and not meta.get("deletionTimestamp"),
                }
            size = self.sizes.get(run, 0)
            if (
                attempt == 1
                and run not in self.first_running
                and len(pods) == size
                and all(p["running"] for p in pods.values())
            ):
                self.first_running[run] = now
            rec = self.recs.get(run)
            if rec is None or rec.t_signal is None:
                return
            if attempt == rec.attempt and (hit := _pod_hit(kind, obj)):
                self._visible(rec, now, hit)
            # Gone as the operator counts it (children.gang_gone): deleted, or terminal (every
            # container exited: a graceful shutdown's pods end Failed and are deleted later).
            phase = (obj.get("status") or {}).get("phase")
            if attempt == rec.attempt and (kind == "DELETED" or phase in TERMINAL_PHASES):
                rec.old_pods.discard(meta["name"])
                if not rec.old_pods and rec.t_pods_gone is None:
                    rec.t_pods_gone = now
            if attempt == rec.attempt + 1:
                self._next_attempt_pods(rec, pods, now)

    @staticmethod
    def _next_attempt_pods(rec: rp.Recovery, pods: dict[str, dict[str, Any]], now: float) -> None:
        if len(pods) < rec.size:
            return
        if rec.t_admitted is None:
            rec.t_admitted = now
        if rec.t_scheduled is None and all(p["node"] for p in pods.values()):
            rec.t_scheduled = now
        if rec.t_running is None and all(p["running"] for p in pods.values()):
            rec.t_running = now

    # the peers' PyTorchJobs and pods
    def on_peer_job(self, kind: str, obj: dict[str, Any], now: float) -> None:
        with self.lock:
            peer = self.peers.get(obj["metadata"]["name"])
            if peer is not None and kind == "ADDED" and peer.t_created is None:
                peer.t_created = now

    def on_peer_pod(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        job = (meta.get("labels") or {}).get(rp.JOB_LABEL, "")
        with self.lock:
            peer = self.peers.get(job)
            if peer is None:
                return
            if kind == "DELETED":
                peer.pods.pop(meta["name"], None)
                return
            running = (obj.get("status") or {}).get("phase") == "Running" and not meta.get(
                "deletionTimestamp"
            )
            peer.pods[meta["name"]] = (meta["uid"], running)
            if peer.t_signal is None:
                # peer (b): the whole job Running; peer (a) before its interruption
                if (
                    peer.t_running is None
                    and len(peer.pods) == peer.size
                    and all(r for _, r in peer.pods.values())
                ):
                    peer.t_running = now
                return
            fresh = [r for uid, r in peer.pods.values() if uid not in peer.old_uids]
            if fresh and peer.t_replaced is None:
                peer.t_replaced = now
            if (
                len(fresh) == peer.size
                and all(fresh)
                and peer.t_running is not None
                and peer.t_running < peer.t_signal
            ):
                peer.t_running = now


def _pod_hit(kind: str, obj: dict[str, Any]) -> str:
    """What shows a signal on a pod: deleted or being deleted, DisruptionTarget, a terminal
    phase; "" for nothing."""
    status = obj.get("status") or {}
    if kind == "DELETED" or obj["metadata"].get("deletionTimestamp"):
        return "pod deleted"
    if any(c.get("type") == "DisruptionTarget" for c in status.get("conditions") or []):
        return "pod DisruptionTarget"
    if status.get("phase") in TERMINAL_PHASES:
        return f"pod {status['phase']}"
    return ""
