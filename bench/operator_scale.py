"""Scale benchmark: 1,000 one-node and 100 four-node TrainingRuns on 1,500 fake spot nodes,
300 interruptions within 60 s across zones with mixed signals, ASG-like replacement.

On the local cluster (kwok nodes: pods do not execute), in one run:

1. cold start: every TrainingRun is created with the operator stopped, then the operator
   starts: time from its start to its first decision (first status write or job), and to
   every first attempt Running;
2. the storm: ``--interruptions`` runs lose one node each, paced over ``--spread-seconds``,
   signals in turn (NTH spot ITN, Karpenter, ASG lifecycle, instance loss, graceful
   shutdown) through ``spotrun_dev.inject``; the ASG replaces each reclaimed instance with
   a new node in its zone. Each recovery is cut into phases (``recovery_phases``):
   p50/p99 per phase per signal, signal → next attempt created, → all pods Running;
3. the operator's peak RSS and CPU seconds, and its API requests per recovery (reads and
   writes, from the apiserver's audit log, by user agent);
4. peer (a): the Kubeflow training operator alone, PyTorchJobs with
   ``restartPolicy: OnFailure`` / ``ExitCode`` whose node is interrupted the same way:
   signal → replacement pod created → Running (what users get without spotrun);
5. peer (b): a bare ``kubectl create`` loop of as many PyTorchJobs as there were
   recoveries, sized like them: the API floor for the recovery throughput.

The benchmark's nodes are ``bench-p4d-*``, labelled and tainted ``spotrun.dev/bench=
operator-scale`` and its pods select and tolerate that only: it never touches the default
fleet nor another test's pods. Everything it made is deleted at the end, on failure too.

Prints tables, writes bench/results/operator_scale.json. Not a test: it asserts nothing.
Usage: ``python bench/operator_scale.py [--runs 1000 --big-runs 100 --nodes 1500
--interruptions 300 --spread-seconds 60]``; small: ``--runs 50 --big-runs 5 --nodes 80
--interruptions 20``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import recovery_phases as rp
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrun_dev import cluster_apply, fleet, inject, paths, storage, traces

RESULTS = paths.REPO_ROOT / "bench" / "results" / "operator_scale.json"
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
KUBECTL = paths.binary("kubectl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="TrainingRuns of --run-size nodes")
    ap.add_argument("--run-size", type=int, default=1)
    ap.add_argument("--big-runs", type=int, default=100, help="TrainingRuns of --big-size")
    ap.add_argument("--big-size", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=1500, help="fake spot nodes")
    ap.add_argument("--interruptions", type=int, default=300)
    ap.add_argument("--spread-seconds", type=float, default=60.0)
    ap.add_argument("--burst", type=int, default=100, help="runs interrupted all at once")
    ap.add_argument("--peer-jobs", type=int, default=50, help="peer (a): Kubeflow-only jobs")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument(
        "--signals",
        type=lambda v: tuple(x for x in v.split(",") if x),
        default=SIGNALS,
        help=f"the storm's signals, comma-separated (default {','.join(SIGNALS)})",
    )
    ap.add_argument("--resync-seconds", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="per waiting step, seconds")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


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
        attempts = (obj.get("status") or {}).get("attempts") or []
        with self.lock:
            if attempts and self.t_op_start and self.t_first_decision is None:
                self.t_first_decision = now
            rec = self.recs.get(name)
            if rec is None or rec.t_signal is None:
                return
            for a in attempts:
                if a.get("attempt") != rec.attempt or not a.get("outcome"):
                    continue
                if rec.t_detected is None:
                    rec.t_detected = now
                    rec.reason = str(a.get("reason") or "")
                rec.ended_at = rp.parse_time(a.get("endedAt"))
                rec.next_attempt_at = rp.parse_time(a.get("nextAttemptAt"))

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
            if attempt == rec.attempt and kind == "DELETED":
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
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"pod {status['phase']}"
    return ""


# --- the benchmark ----------------------------------------------------------------------


T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.api = rp.api_client(paths.KUBECONFIG)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.obs = Observer()
        self.stop = threading.Event()
        self.sampler = rp.Sampler()
        self.op: subprocess.Popen[bytes] | None = None
        self.pv: str | None = None
        self.replacements = 0
        self.zone_of: dict[str, str] = {}
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.fail_lock = threading.Lock()

    # setup and teardown
    def setup(self) -> None:
        self.core.list_namespace(limit=1)  # the cluster answers, or fail here
        ext = client.ApiextensionsV1Api(self.api)
        try:
            ext.read_custom_resource_definition(f"trainingruns.{GROUP}")
        except ApiException as exc:
            if exc.status != 404:
                raise
            crd = yaml.safe_load(
                (paths.REPO_ROOT / "crds" / f"trainingruns.{GROUP}.yaml").read_text()
            )
            cluster_apply.apply_manifests(self.api, [crd])
        for ns in (NS, PEER_NS):
            self._delete_namespace(ns)
            self.core.create_namespace({"metadata": {"name": ns}})
        self.pv = storage.ensure_checkpoint_claim(self.core, NS)
        self._delete_nodes()  # leftovers of an interrupted earlier run
        t0 = time.time()
        names = [(f"{NODE_PREFIX}{i}", ZONES[i % len(ZONES)]) for i in range(self.args.nodes)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda nz: self.core.create_node(bench_node(*nz)), names))
        self.wait("every bench node Ready", self._nodes_ready)
        say(f"{self.args.nodes} bench nodes Ready in {time.time() - t0:.1f}s")

    def _nodes_ready(self) -> bool:
        nodes = self.core.list_node(label_selector=f"{BENCH_LABEL}={BENCH_VALUE}").items
        ready = sum(
            1
            for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        )
        return bool(ready >= self.args.nodes)

    def _list_nodes(self, **kw: Any) -> Any:
        return self.core.list_node(label_selector=f"{BENCH_LABEL}={BENCH_VALUE}", **kw)

    def start_watches(self) -> None:
        s = self.stop
        c = self.custom
        rp.start_watch(
            c.list_namespaced_custom_object,
            (GROUP, VERSION, NS, "trainingruns"),
            self.obs.on_run,
            s,
        )
        rp.start_watch(
            c.list_namespaced_custom_object,
            ("kubeflow.org", "v1", NS, "pytorchjobs"),
            self.obs.on_job,
            s,
        )
        rp.start_watch(self.core.list_namespaced_pod, (NS,), self.obs.on_pod, s)
        rp.start_watch(self._list_nodes, (), self.obs.on_node, s)
        rp.start_watch(
            c.list_namespaced_custom_object,
            ("kubeflow.org", "v1", PEER_NS, "pytorchjobs"),
            self.obs.on_peer_job,
            s,
        )
        rp.start_watch(self.core.list_namespaced_pod, (PEER_NS,), self.obs.on_peer_pod, s)
        self.sampler.start()

    def teardown(self) -> None:
        say("cleaning up")
        self.stop_operator()
        self.stop.set()
        self.sampler.stop.set()
        for ns in (NS, PEER_NS):
            try:
                self._delete_namespace(ns)
            except Exception as exc:
                print(f"cleanup: namespace {ns}: {exc}", flush=True)
        try:
            self._delete_nodes()
        except Exception as exc:
            print(f"cleanup: nodes: {exc}", flush=True)
        if self.pv:
            storage.delete_volume(self.core, self.pv)
        say("cleaned up")

    def _delete_namespace(self, ns: str) -> None:
        try:
            self.core.delete_namespace(ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return

        def gone() -> bool:
            try:
                self.core.read_namespace(ns)
            except ApiException as exc:
                return bool(exc.status == 404)
            return False

        self.wait(f"namespace {ns} deleted", gone, timeout=600)

    def _delete_nodes(self) -> None:
        """Every node with the bench label (and its Lease), finalizers dropped."""
        sel = f"{BENCH_LABEL}={BENCH_VALUE}"
        for n in self.core.list_node(label_selector=sel).items:
            if n.metadata.finalizers:
                self.core.patch_node(n.metadata.name, {"metadata": {"finalizers": None}})
        self.core.delete_collection_node(label_selector=sel)
        self.wait("bench nodes deleted", lambda: not self.core.list_node(label_selector=sel).items)
        leases = client.CoordinationV1Api(self.api)
        for lease in leases.list_namespaced_lease("kube-node-lease").items:
            if lease.metadata.name.startswith(NODE_PREFIX):
                try:
                    leases.delete_namespaced_lease(lease.metadata.name, "kube-node-lease")
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def wait(self, what: str, cond: Any, timeout: float | None = None, interval: float = 2) -> bool:
        deadline = time.time() + (timeout or self.args.timeout)
        while time.time() < deadline:
            if cond():
                return True
            time.sleep(interval)  # a poll of a condition, with a deadline
        self.notes.append(f"timed out waiting for {what}")
        say(f"warning: timed out waiting for {what}")
        return False

    # the operator
    def start_operator(self) -> None:
        root = paths.REPO_ROOT
        pythonpath = os.pathsep.join(
            str(root / d) for d in ("api", "operator", "trainer", "hack", "cli")
        )
        log = (paths.CLUSTER_DIR / "bench-operator-scale.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "spotrun_operator.main",
            "-n",
            NS,
            "--metrics-port=0",
            "--pricing=table",
            "--backoff-base-seconds=1",
            "--backoff-jitter=0",
            "--failure-settle-seconds=1",
            f"--resync-seconds={self.args.resync_seconds}",
        ]
        env = {
            **os.environ,
            "KUBECONFIG": str(paths.KUBECONFIG),
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
        }
        with self.obs.lock:
            self.obs.t_op_start = time.time()
        self.op = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        self.sampler.proc = self.op

    def stop_operator(self) -> None:
        if self.op is None or self.op.poll() is not None:
            return
        self.sampler.sample()
        self.op.terminate()
        try:
            self.op.wait(30)
        except subprocess.TimeoutExpired:
            self.op.kill()
            self.op.wait(10)

    # 1. cold start
    def create_runs(self) -> list[str]:
        a = self.args
        names = [(f"s-{i:04d}", a.run_size) for i in range(a.runs)]
        names += [(f"b-{i:03d}", a.big_size) for i in range(a.big_runs)]
        with self.obs.lock:
            self.obs.sizes.update(dict(names))
        t0 = time.time()

        def create(nm: tuple[str, int]) -> None:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, "trainingruns", run_manifest(*nm)
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        say(f"{len(names)} TrainingRuns created in {time.time() - t0:.1f}s")
        return [n for n, _ in names]

    def cold_start(self, runs: list[str]) -> dict[str, Any]:
        self.start_operator()
        t0 = self.obs.t_op_start or time.time()

        def all_running() -> bool:
            with self.obs.lock:
                return len(self.obs.first_running) >= len(runs)

        self.wait("every first attempt Running", all_running)
        with self.obs.lock:
            created = sorted(self.obs.first_created.values())
            running = sorted(self.obs.first_running.values())
            first = self.obs.t_first_decision
        self.sampler.mark("after_cold_start")
        out = {
            "runs": len(runs),
            "operator_start_to_first_decision_s": round(first - t0, 3) if first else None,
            "operator_start_to_all_first_attempts_created_s": round(created[-1] - t0, 3)
            if len(created) >= len(runs)
            else None,
            "operator_start_to_all_first_attempts_running_s": round(running[-1] - t0, 3)
            if len(running) >= len(runs)
            else None,
            "first_attempts_created": len(created),
            "first_attempts_running": len(running),
        }
        say(f"cold start: {json.dumps(out)}")
        return out

    # 2. the storm
    def pick_victims(
        self, runs: list[str], count: int, signals: tuple[str, ...], group: str
    ) -> list[tuple[str, str, str]]:
        """(run, node, signal): one node each of ``count`` runs not interrupted yet, the
        signals in turn; only nodes of this bench."""
        for n in self._list_nodes().items:
            self.zone_of[n.metadata.name] = n.metadata.labels.get(ZONE_LABEL, "")
        own = set(self.zone_of)
        with self.obs.lock:
            fresh = [r for r in runs if r not in self.obs.recs]
        chosen = self.rng.sample(fresh, min(count, len(fresh)))
        out: list[tuple[str, str, str]] = []
        with self.obs.lock:
            for run in chosen:
                pods = self.obs.pods_by_job.get(f"{run}-a1") or {}
                nodes = sorted(p["node"] for p in pods.values() if p["node"] in own)
                if not nodes:
                    continue
                sig = signals[len(out) % len(signals)]
                node = self.rng.choice(nodes)
                out.append((run, node, sig))
                rec = rp.Recovery(run=run, size=self.obs.sizes[run], node=node, group=group)
                rec.old_pods = set(pods)
                self.obs.recs[run] = rec
                self.obs.victim_nodes[node] = run
        return out

    def storm(self, victims: list[tuple[str, str, str]], spread: float) -> tuple[float, float]:
        """Interrupt each victim in turn, paced over ``spread`` seconds (0: all at once)."""
        gap = spread / max(1, len(victims))
        workers: list[threading.Thread] = []
        t_start = time.time()
        for run, node, sig in victims:
            th = threading.Thread(target=self._hit, args=(run, node, sig), daemon=True)
            th.start()
            workers.append(th)
            if gap:
                time.sleep(gap)  # the storm's pacing, not a wait for a condition
        t_last = time.time()
        for th in workers:
            th.join(self.args.timeout)
        say(f"{len(victims)} interruptions in {t_last - t_start:.1f}s")
        return t_start, t_last

    def _interrupt(self, node: str, sig: str) -> None:
        """One interruption, then the ASG's replacement instance in the same zone."""
        zone = (self.core.read_node(node).metadata.labels or {}).get(
            "topology.kubernetes.io/zone", ZONES[0]
        )
        try:
            inject.interrupt(self.core, node, sig, drain_timeout=300)
        except Exception as exc:
            with self.fail_lock:
                self.failures.append(f"{sig} on {node}: {exc!r}"[:300])
        with self.fail_lock:
            self.replacements += 1
            name = f"{NODE_PREFIX}r{self.replacements}"
        self.core.create_node(bench_node(name, zone))

    def _hit(self, run: str, node: str, sig: str) -> None:
        with self.obs.lock:
            rec = self.obs.recs[run]
            rec.signal, rec.t_signal = sig, time.time()
        self._interrupt(node, sig)

    def wait_recovered(self, group: str) -> float:
        def done() -> bool:
            with self.obs.lock:
                return all(
                    r.t_running is not None for r in self.obs.recs.values() if r.group == group
                )

        self.wait("every interrupted run's next attempt Running", done)
        return time.time()

    # 4. peer (a): the training operator's own restarts
    def create_peer_jobs(self) -> list[str]:
        names = []
        for i in range(self.args.peer_jobs):
            policy = "OnFailure" if i % 2 == 0 else "ExitCode"
            name = f"peer-{i:03d}"
            with self.obs.lock:
                self.obs.peers[name] = PeerJob(name=name, size=1, policy=policy)
            self.custom.create_namespaced_custom_object(
                "kubeflow.org", "v1", PEER_NS, "pytorchjobs", pytorchjob(name, 1, policy, 8)
            )
            names.append(name)
        return names

    def peer_storm(self, names: list[str]) -> None:
        def running() -> bool:
            with self.obs.lock:
                return all(self.obs.peers[n].t_running is not None for n in names)

        self.wait("every peer job Running", running)
        victims = []
        with self.obs.lock:
            for i, n in enumerate(names):
                peer = self.obs.peers[n]
                peer.old_uids = {uid for uid, _ in peer.pods.values()}
                nodes = [
                    p.spec.node_name
                    for p in self.core.list_namespaced_pod(
                        PEER_NS, label_selector=f"{rp.JOB_LABEL}={n}"
                    ).items
                    if p.spec.node_name
                ]
                if nodes:
                    victims.append((n, nodes[0], SIGNALS[i % len(SIGNALS)]))
        gap = self.args.spread_seconds / max(1, self.args.interruptions)
        workers = []
        for n, node, sig in victims:
            with self.obs.lock:
                peer = self.obs.peers[n]
                peer.signal, peer.t_signal = sig, time.time()
            th = threading.Thread(target=self._interrupt, args=(node, sig), daemon=True)
            th.start()
            workers.append(th)
            time.sleep(gap)  # same pacing as the spotrun storm
        for th in workers:
            th.join(self.args.timeout)

        def recovered() -> bool:
            with self.obs.lock:
                return all(
                    (p.t_running or 0) > (p.t_signal or 0)
                    for p in self.obs.peers.values()
                    if p.t_signal
                )

        self.wait("every peer job's replacement pod Running", recovered, timeout=300)

    # 5. peer (b): a bare kubectl create loop
    def floor_loop(self, sizes: list[int]) -> tuple[float, float, list[PeerJob]]:
        jobs = [PeerJob(name=f"floor-{i:04d}", size=s) for i, s in enumerate(sizes)]
        with self.obs.lock:
            for j in jobs:
                self.obs.peers[j.name] = j
        env = {**os.environ, "KUBECONFIG": str(paths.KUBECONFIG)}
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for j in jobs:
                f = Path(tmp) / f"{j.name}.yaml"
                f.write_text(yaml.safe_dump(pytorchjob(j.name, j.size, "Never", 0)))
                files.append(f)
            t0 = time.time()
            for j, f in zip(jobs, files, strict=True):
                j.t_create_call = time.time()
                subprocess.run(
                    [str(KUBECTL), "create", "-f", str(f)],
                    env=env,
                    check=True,
                    capture_output=True,
                )
            t_loop = time.time()

        def running() -> bool:
            with self.obs.lock:
                return all(j.t_running is not None for j in jobs)

        self.wait("every floor job Running", running)
        return t0, t_loop, jobs


# --- results ----------------------------------------------------------------------------


def _rate(n: int, t0: float, ts: list[float]) -> float | None:
    if not ts or n == 0:
        return None
    span = max(ts) - t0
    return round(n / span, 3) if span > 0 else None


def peer_table(peers: list[PeerJob]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sig in [*SIGNALS, "all"]:
        group = [p for p in peers if sig in ("all", p.signal)]
        rec = [p for p in group if p.t_signal and p.t_running and p.t_running > p.t_signal]
        out[sig] = {
            "interrupted": len(group),
            "recovered": len(rec),
            "signal_to_pod_created": rp.spread(
                [p.t_replaced - p.t_signal for p in group if p.t_replaced and p.t_signal]
            ),
            "signal_to_running": rp.spread(
                [p.t_running - p.t_signal for p in rec if p.t_running and p.t_signal]
            ),
        }
    return out


def print_report(res: dict[str, Any]) -> None:
    for group in ("storm", "burst"):
        if group not in res:
            continue
        g = res[group]
        print(
            f"\n== {group}: {g['interruptions']} interruptions over {g['spread_seconds']} s, "
            f"zones {g['zones']}; where the time goes (s, p50/p99; recovered/interrupted) =="
        )
        print(rp.format_phase_table(g["phases"]))
        a = g["api_requests"]
        print(
            f"operator API requests per recovery: reads {a['reads_per_recovery']}, writes "
            f"{a['writes_per_recovery']}; recoveries/s: {g['throughput']}"
        )
    s = res["resources"]
    print(
        f"\noperator: peak RSS {s['operator_peak_rss_mib']} MiB, CPU {s['operator_cpu_seconds']} s"
        f"; RSS at {s['operator_rss_mib_at']}"
    )
    print(
        f"machine {res['machine']}: memory used peak {s['machine_memory_used_peak_gib']} GiB, "
        f"load peak {s['loadavg_1m_peak']}; peak RSS MiB {s['processes_peak_rss_mib']}; "
        f"CPU s {s['processes_cpu_seconds']}"
    )
    c = res["cold_start"]
    print(
        f"cold start, {c['runs']} runs: operator start → first decision "
        f"{c['operator_start_to_first_decision_s']} s; → all first attempts created "
        f"{c['operator_start_to_all_first_attempts_created_s']} s, Running "
        f"{c['operator_start_to_all_first_attempts_running_s']} s"
    )
    if "peer_kubeflow" in res:
        print("\n== peer (a): the Kubeflow training operator alone (OnFailure/ExitCode) ==")
        for sig, row in res["peer_kubeflow"]["by_signal"].items():
            pc, pr = row["signal_to_pod_created"], row["signal_to_running"]
            print(
                f"{sig:<10} {row['recovered']:>3}/{row['interrupted']:<3} signal→pod created "
                f"p50/p99 {pc['p50']}/{pc['p99']}  →Running {pr['p50']}/{pr['p99']}"
            )
        f = res["peer_create_loop"]
        print(
            f"\n== peer (b): kubectl create loop == {f['jobs']} jobs {f['sizes']}: "
            f"{f['created_per_s']}/s created, {f['running_per_s']}/s Running"
        )
        t = res["throughput_ratio"]
        print(f"recoveries ({t['basis']}) / create loop: {t}")
    print("\n== targets ==")
    for k, v in res["targets"].items():
        print(f"{k}: {v}")
    print(f"notes: {res['notes']}; interrupt failures: {len(res.get('interrupt_failures', []))}")


def targets(res: dict[str, Any]) -> dict[str, Any]:
    rows = res["storm"]["phases"]
    p99 = rows["all"]["signal_to_created"]["p99"]
    ratio = (res.get("throughput_ratio") or {}).get("created_per_s")
    rss = res["resources"]["operator_peak_rss_mib"]
    out = {
        "p99_signal_to_created_le_5s": {"value": p99, "met": p99 is not None and p99 <= 5},
        "throughput_ratio_ge_0.8": {"value": ratio, "met": ratio is not None and ratio >= 0.8},
        "rss_le_150mib": {"value": rss, "met": rss <= 150},
    }
    if "all_but_loss" in rows:
        v = rows["all_but_loss"]["signal_to_created"]["p99"]
        out["p99_signal_to_created_le_5s_signals_with_notice"] = {
            "value": v,
            "met": v is not None and v <= 5,
        }
    return out


def api_table(counts: Counter[str], window: float, recoveries: int) -> dict[str, Any]:
    reads, writes = rp.split_reads_writes(counts)
    return {
        "window_s": round(window, 1),
        "recoveries": recoveries,
        "by_request": dict(counts.most_common()),
        "reads": reads,
        "writes": writes,
        "reads_per_recovery": round(reads / recoveries, 2) if recoveries else None,
        "writes_per_recovery": round(writes / recoveries, 2) if recoveries else None,
    }


def rates(recs: list[rp.Recovery], t0: float) -> dict[str, float | None]:
    created = [r.t_created for r in recs if r.t_created]
    running = [r.t_running for r in recs if r.t_running]
    return {
        "created_per_s": _rate(len(created), t0, created),
        "running_per_s": _rate(len(running), t0, running),
    }


def interruption_step(
    bench: Bench, runs: list[str], count: int, signals: tuple[str, ...], group: str, spread: float
) -> dict[str, Any]:
    """One storm (paced) or burst (spread 0): phases, rates, API requests."""
    victims = bench.pick_victims(runs, count, signals, group)
    say(f"{group}: {len(victims)} interruptions over {spread} s")
    offset = rp.audit_offset(paths.AUDIT_LOG)
    t0, _ = bench.storm(victims, spread)
    t_end = bench.wait_recovered(group)
    bench.sampler.mark(f"after_{group}")
    recs = [r for r in bench.obs.recs.values() if r.group == group]
    counts = rp.audit_requests(paths.AUDIT_LOG, t0, t_end, offset=offset)
    return {
        "interruptions": len(victims),
        "spread_seconds": spread,
        "zones": dict(Counter(bench.zone_of.get(n, "?") for _, n, _ in victims)),
        "phases": rp.phase_table(recs, signals),
        "first_visible_as": {
            sig: dict(Counter(r.visible_by for r in recs if r.signal == sig)) for sig in signals
        },
        "operator_reason": {
            sig: dict(Counter(r.reason for r in recs if r.signal == sig)) for sig in signals
        },
        "throughput": rates(recs, t0),
        "api_requests": api_table(counts, t_end - t0, sum(1 for r in recs if r.t_created)),
    }


def peers_step(bench: Bench, peers: list[str], sizes: list[int]) -> dict[str, Any]:
    """Peer (a) and peer (b)."""
    out: dict[str, Any] = {}
    say("peer (a): interrupting the plain PyTorchJobs")
    bench.peer_storm(peers)
    jobs_a = [bench.obs.peers[n] for n in peers]
    out["peer_kubeflow"] = {
        "restart_policies": ["OnFailure", "ExitCode"],
        "by_signal": peer_table(jobs_a),
        "by_policy": {
            pol: peer_table([p for p in jobs_a if p.policy == pol])["all"]
            for pol in ("OnFailure", "ExitCode")
        },
    }
    say(f"peer (b): kubectl create loop of {len(sizes)} PyTorchJobs")
    t0, t_loop, jobs = bench.floor_loop(sizes)
    fc = [j.t_created for j in jobs if j.t_created]
    fr = [j.t_running for j in jobs if j.t_running]
    out["peer_create_loop"] = {
        "jobs": len(jobs),
        "sizes": dict(Counter(sizes)),
        "loop_s": round(t_loop - t0, 2),
        "created_per_s": _rate(len(fc), t0, fc),
        "running_per_s": _rate(len(fr), t0, fr),
        "create_to_running": rp.spread(
            [j.t_running - j.t_create_call for j in jobs if j.t_running and j.t_create_call]
        ),
    }
    return out


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # SIGTERM too runs the cleanup in ``main``'s finally


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    bench = Bench(args)
    res: dict[str, Any] = {
        "sizes": {
            "runs": args.runs,
            "run_size": args.run_size,
            "big_runs": args.big_runs,
            "big_size": args.big_size,
            "nodes": args.nodes,
            "interruptions": args.interruptions,
            "spread_seconds": args.spread_seconds,
            "burst": args.burst,
            "peer_jobs": 0 if args.no_peers else args.peer_jobs,
            "signals": list(args.signals),
            "burst_signals": list(BURST_SIGNALS),
            "zones": list(ZONES),
        },
        "machine": rp.machine(),
        "operator_flags": {
            "backoff_base_seconds": 1,
            "backoff_jitter": 0,
            "failure_settle_seconds": 1,
            "resync_seconds": args.resync_seconds,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        bench.setup()
        bench.start_watches()
        runs = bench.create_runs()
        peers = [] if args.no_peers else bench.create_peer_jobs()
        res["cold_start"] = bench.cold_start(runs)
        res["storm"] = interruption_step(
            bench, runs, args.interruptions, args.signals, "storm", args.spread_seconds
        )
        if args.burst:
            res["burst"] = interruption_step(bench, runs, args.burst, BURST_SIGNALS, "burst", 0)
        bench.stop_operator()
        res["resources"] = bench.sampler.report()
        basis = "burst" if args.burst else "storm"
        if not args.no_peers:
            sizes = [r.size for r in bench.obs.recs.values() if r.group == basis]
            res.update(peers_step(bench, peers, sizes))
            floor = res["peer_create_loop"]
            mine = res[basis]["throughput"]
            res["throughput_ratio"] = {
                "basis": basis,
                **{
                    k: round(mine[k] / floor[k], 3) if mine[k] and floor[k] else None
                    for k in ("created_per_s", "running_per_s")
                },
            }
        res["resources"] = bench.sampler.report()
        res["interrupt_failures"] = bench.failures
        res["targets"] = targets(res)
    except (KeyboardInterrupt, SystemExit):
        bench.notes.append("interrupted (Ctrl-C or SIGTERM)")
        raise
    finally:
        res["notes"] = bench.notes
        try:
            bench.teardown()
        finally:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2) + "\n")
    print_report(res)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
