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
   writes, from the apiserver's audit log, by user agent); inside the operator, from its
   own /metrics over each storm (``operator_metrics``): how long woken runs waited for a
   reconcile thread, how long reconciles and each verb's requests took;
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
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import audit_log
import operator_metrics as om
import recovery_phases as rp
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from scale_objects import (
    BENCH_LABEL,
    BENCH_VALUE,
    BURST_SIGNALS,
    GROUP,
    NODE_PREFIX,
    NS,
    PEER_NS,
    SIGNALS,
    VERSION,
    ZONE_LABEL,
    ZONES,
    Observer,
    PeerJob,
    bench_node,
    pytorchjob,
    run_manifest,
)
from scale_report import (
    api_table,
    apiserver_clients,
    peer_table,
    per_second,
    print_report,
    rates,
    steady_per_second,
    targets,
)

from spotrun_api.naming import job_name
from spotrun_dev import cluster_apply, inject, paths, storage
from spotrun_dev.prometheus import free_port
from spotrun_operator.facts.config import DEFAULT_WORKERS

RESULTS = paths.REPO_ROOT / "bench" / "results" / "operator_scale.json"


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
    ap.add_argument("--workers", type=int, default=None, help="operator reconcile threads")
    ap.add_argument("--timeout", type=float, default=600.0, help="per waiting step, seconds")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


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
        self.metrics_port = free_port()
        self.pv: str | None = None
        self.replacements = 0
        # Node names of this run only: kwok (v0.8) keeps renewing the cached Lease of a
        # node deleted under it (a reclaimed one) against a UID that no longer exists, and
        # a later node of the same name then never gets its Lease renewed: it flaps to
        # Unknown every minute (24 names and 31 lost attempts in one full-size run after
        # three medium runs in the same cluster).
        self.node_prefix = f"{NODE_PREFIX}{secrets.token_hex(2)}-"
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
        names = [(f"{self.node_prefix}{i}", ZONES[i % len(ZONES)]) for i in range(self.args.nodes)]
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
            f"--metrics-port={self.metrics_port}",
            "--metrics-address=127.0.0.1",
            "--pricing=table",
            "--backoff-base-seconds=1",
            "--backoff-jitter=0",
            "--failure-settle-seconds=1",
            f"--resync-seconds={self.args.resync_seconds}",
        ]
        if self.args.workers is not None:
            cmd.append(f"--workers={self.args.workers}")
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

    def _interrupt(self, node: str, sig: str, on_start: Callable[[], None]) -> None:
        """One interruption, then the ASG's replacement instance in the same zone.
        ``on_start`` stamps the signal: just before the plan's first write, after the
        injector's own reads (on a loaded apiserver they took most of a second)."""
        zone = (self.core.read_node(node).metadata.labels or {}).get(
            "topology.kubernetes.io/zone", ZONES[0]
        )
        try:
            inject.interrupt(self.core, node, sig, drain_timeout=300, on_start=on_start)
        except Exception as exc:
            with self.fail_lock:
                self.failures.append(f"{sig} on {node}: {exc!r}"[:300])
        with self.fail_lock:
            self.replacements += 1
            name = f"{self.node_prefix}r{self.replacements}"
        self.core.create_node(bench_node(name, zone))

    def _stamp(self, target: rp.Recovery | PeerJob) -> Callable[[], None]:
        """The injector's ``on_start``: the signal's time on ``target``."""

        def started() -> None:
            with self.obs.lock:
                target.t_signal = time.time()

        return started

    def _hit(self, run: str, node: str, sig: str) -> None:
        with self.obs.lock:
            rec = self.obs.recs[run]
            rec.signal = sig
        self._interrupt(node, sig, self._stamp(rec))

    def wait_recovered(self, group: str) -> float:
        """Until every interrupted run's next attempt runs, or was itself lost before it
        ran (it landed on a node the same storm took next; ``unprovoked_outcomes``)."""

        def done() -> bool:
            with self.obs.lock:
                return all(
                    r.t_running is not None or (r.run, r.attempt + 1) in self.obs.unprovoked
                    for r in self.obs.recs.values()
                    if r.group == group
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
                peer.signal = sig
            th = threading.Thread(
                target=self._interrupt, args=(node, sig, self._stamp(peer)), daemon=True
            )
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


def interruption_step(
    bench: Bench, runs: list[str], count: int, signals: tuple[str, ...], group: str, spread: float
) -> dict[str, Any]:
    """One storm (paced) or burst (spread 0): phases, rates, API requests."""
    victims = bench.pick_victims(runs, count, signals, group)
    say(f"{group}: {len(victims)} interruptions over {spread} s")
    offset = audit_log.offset(paths.AUDIT_LOG)
    scraped = om.scrape(bench.metrics_port)
    t0, _ = bench.storm(victims, spread)
    t_end = bench.wait_recovered(group)
    inside = om.inside_operator(scraped, om.scrape(bench.metrics_port))
    bench.sampler.mark(f"after_{group}")
    recs = [r for r in bench.obs.recs.values() if r.group == group]
    counts = audit_log.requests(paths.AUDIT_LOG, t0, t_end, start=offset)
    stored = audit_log.created_at(paths.AUDIT_LOG, t0, t_end, "pytorchjobs", start=offset)
    with bench.obs.lock:
        for r in recs:
            r.t_created_stored = stored.get(job_name(r.run, r.attempt + 1))
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
        "status_writes": rp.status_write_table(recs),
        "inside_operator": inside,
        "apiserver_clients": apiserver_clients(paths.AUDIT_LOG, t0, t_end, offset),
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
        "created_per_s": per_second(len(fc), t0, fc),
        "running_per_s": per_second(len(fr), t0, fr),
        "created_per_s_steady": steady_per_second(fc),
        "running_per_s_steady": steady_per_second(fr),
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
            "workers": args.workers if args.workers is not None else f"default ({DEFAULT_WORKERS})",
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
                    for k in (
                        "created_per_s",
                        "running_per_s",
                        "created_per_s_steady",
                        "running_per_s_steady",
                    )
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
        with bench.obs.lock:  # also when interrupted: why a too-large run went wrong
            res["unprovoked_outcomes"] = dict(Counter(bench.obs.unprovoked.values()))
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
