"""Recovery benchmark: many TrainingRuns on a big fake spot fleet, many interruptions.

50 TrainingRuns of 2 nodes on 120 fake spot p4d nodes; 50 nodes (one per run) are
reclaimed over a minute with mixed signals, and the ASG replaces each lost instance with a
new node, as EKS does. Measured:

- signal → next attempt's PyTorchJob created, and signal → all its pods Running (p50/p99);
- the operator's peak RSS and CPU seconds over the whole benchmark;
- Kubernetes API writes per recovery (from the apiserver's audit log, operator requests only).

Prints the figures and writes bench/results/operator_recovery.json. Not a test: it asserts
nothing about time. Usage: ``python bench/operator_recovery.py [--runs 50 --nodes 120]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import audit_log
import yaml
from kubernetes import client, watch
from process_stats import proc_stats
from recovery_phases import percentile

from spotrun_dev import cluster, cluster_apply, fleet, inject, paths, storage, traces

RESULTS = paths.REPO_ROOT / "bench" / "results" / "operator_recovery.json"
NAMESPACE = "spotrun-bench"
SIGNALS: tuple[traces.Signal, ...] = ("nth", "karpenter", "asg", "loss", "shutdown")


@dataclass
class RunTimes:
    signal: str = ""
    t_signal: float = 0.0
    t_created: float | None = None
    t_running: float | None = None
    pods: dict[str, bool] = field(default_factory=dict)


def _run_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "image": "spotrun/trainer:dev",
            "nodes": 2,
            "gpusPerNode": 8,
            "capacity": {"type": "spot", "instanceTypes": ["p4d.24xlarge"]},
            "checkpoint": {"volume": {"claimName": "ckpt"}},
            "maxPreemptions": 10,
        },
    }


def _audit_writes(since: float, until: float) -> Counter[str]:
    """Operator write requests in the audit log between two wall-clock times."""
    counts: Counter[str] = audit_log.writes(audit_log.requests(paths.AUDIT_LOG, since, until))
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=120)
    ap.add_argument("--spread-seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    return ap.parse_args(argv)


def prepare_cluster(nodes: int) -> tuple[client.ApiClient, fleet.FleetSpec, str]:
    """The local cluster with a spot fleet of ``nodes``, the CRD, a fresh namespace and its
    checkpoint claim; returns the API client, the fleet and the claim's PV."""
    c = cluster.ensure_cluster(with_fleet=False)
    api = c.api_client()
    core = client.CoreV1Api(api)
    spec = fleet.FleetSpec(spot_nodes=nodes, on_demand_nodes=0)
    print(f"fleet: {nodes} spot nodes", flush=True)
    cluster.ensure_fleet(core, spec)
    crd = yaml.safe_load((paths.REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml").read_text())
    cluster_apply.apply_manifests(api, [crd])
    cluster.fresh_namespace(core, NAMESPACE)
    pv = storage.ensure_checkpoint_claim(core, NAMESPACE)
    return api, spec, pv


def start_operator() -> subprocess.Popen[bytes]:
    log = (paths.CLUSTER_DIR / "bench-operator.log").open("w")
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "spotrun-operator"),
            "--pricing",
            "table",
            "--metrics-port",
            "0",
            "-n",
            NAMESPACE,
        ],
        env={
            **os.environ,
            "KUBECONFIG": str(paths.KUBECONFIG),
            "SPOTRUN_BACKOFF_BASE_SECONDS": "1",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _job_attempt(name: str) -> tuple[str, str]:
    """(run, attempt) of a PyTorchJob name ``<run>-a<attempt>``."""
    run, _, attempt = name.rpartition("-a")
    return run, attempt


class Bench:
    """What the watches and the sampler see while the benchmark runs (thread-safe)."""

    def __init__(self, api: client.ApiClient, op: subprocess.Popen[bytes]) -> None:
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.op = op
        self.times: dict[str, RunTimes] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.peak_rss, self.cpu = 0, 0.0

    def start_threads(self) -> None:
        for target in (self._sample, self._watch_jobs, self._watch_pods):
            threading.Thread(target=target, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.is_set() and self.op.poll() is None:
            _, peak, cpu = proc_stats(self.op.pid)
            self.peak_rss, self.cpu = max(self.peak_rss, peak), cpu
            self.stop.wait(0.5)

    def _watch_jobs(self) -> None:
        w = watch.Watch()
        for ev in w.stream(
            self.custom.list_namespaced_custom_object,
            "kubeflow.org",
            "v1",
            NAMESPACE,
            "pytorchjobs",
            timeout_seconds=900,
        ):
            if self.stop.is_set():
                w.stop()
                break
            run, attempt = _job_attempt(ev["object"]["metadata"]["name"])
            with self.lock:
                rt = self.times.get(run)
                if ev["type"] != "ADDED" or attempt != "2" or rt is None:
                    continue
                if rt.t_signal and rt.t_created is None:
                    rt.t_created = time.time()

    def _watch_pods(self) -> None:
        w = watch.Watch()
        for ev in w.stream(self.core.list_namespaced_pod, NAMESPACE, timeout_seconds=900):
            if self.stop.is_set():
                w.stop()
                break
            pod = ev["object"]
            job = (pod.metadata.labels or {}).get("training.kubeflow.org/job-name", "")
            run, attempt = _job_attempt(job)
            with self.lock:
                rt = self.times.get(run)
                if not rt or attempt != "2" or rt.t_running is not None:
                    continue
                rt.pods[pod.metadata.name] = (
                    pod.status.phase == "Running" and ev["type"] != "DELETED"
                )
                if len(rt.pods) == 2 and all(rt.pods.values()):
                    rt.t_running = time.time()

    def create_runs(self, names: list[str]) -> None:
        t0 = time.time()
        for n in names:
            self.times[n] = RunTimes()
            self.custom.create_namespaced_custom_object(
                "spotrun.dev", "v1alpha1", NAMESPACE, "trainingruns", _run_manifest(n)
            )

        def all_running() -> bool:
            pods = self.core.list_namespaced_pod(NAMESPACE).items
            running = [
                p
                for p in pods
                if p.status.phase == "Running"
                and p.metadata.labels.get("training.kubeflow.org/job-name", "").endswith("-a1")
            ]
            return bool(len(running) == 2 * len(names))

        cluster.wait_for("every first attempt Running", all_running, timeout=600, interval=2)
        print(f"{len(names)} runs Running after {time.time() - t0:.1f}s", flush=True)

    def victims(self, names: list[str], rng: random.Random) -> list[tuple[str, str]]:
        """One node per run, so every run sees exactly one interruption."""
        out = []
        for n in names:
            pods = self.core.list_namespaced_pod(
                NAMESPACE, label_selector=f"training.kubeflow.org/job-name={n}-a1"
            ).items
            out.append((n, rng.choice(pods).spec.node_name))
        return out

    def storm(
        self, victims: list[tuple[str, str]], spec: fleet.FleetSpec, spread_seconds: float
    ) -> None:
        """Interrupt each victim node with the next signal, paced over ``spread_seconds``;
        the ASG replaces each reclaimed instance with a fresh node."""
        gap = spread_seconds / max(1, len(victims))
        workers: list[threading.Thread] = []
        for i, (run, node) in enumerate(victims):
            th = threading.Thread(
                target=self._hit, args=(i, run, node, SIGNALS[i % len(SIGNALS)], spec), daemon=True
            )
            th.start()
            workers.append(th)
            time.sleep(gap)  # the storm's pacing, not a wait for a condition
        for th in workers:
            th.join(600)

    def _hit(self, i: int, run: str, node: str, sig: traces.Signal, spec: fleet.FleetSpec) -> None:
        with self.lock:
            self.times[run].signal = sig

        def started() -> None:  # just before the plan's first write: the signal
            with self.lock:
                self.times[run].t_signal = time.time()

        inject.interrupt(self.core, node, sig, drain_timeout=300, on_start=started)
        zone = spec.zones[i % len(spec.zones)]
        self.core.create_node(fleet.build_node(f"spot-p4d-r{i}", "spot", zone, spec.region))

    def wait_recovered(self) -> None:
        def recovered() -> bool:
            with self.lock:
                return all(rt.t_running is not None for rt in self.times.values())

        try:
            cluster.wait_for("every run's attempt 2 Running", recovered, timeout=600, interval=2)
        except cluster.ClusterError as exc:
            print(f"warning: {exc}", flush=True)

    def stop_operator(self) -> None:
        self.stop.set()
        rss, cpu_now = (
            proc_stats(self.op.pid)[1:]  # (peak RSS, CPU seconds)
            if self.op.poll() is None
            else (self.peak_rss, self.cpu)
        )
        self.peak_rss, self.cpu = max(self.peak_rss, rss), max(self.cpu, cpu_now)
        self.op.terminate()
        self.op.wait(30)


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": round(statistics.mean(values), 3) if values else None,
    }


def summarize(
    args: argparse.Namespace,
    times: dict[str, RunTimes],
    interruptions: int,
    writes: Counter[str],
    peak_rss: int,
    cpu: float,
) -> dict[str, Any]:
    """The benchmark's JSON result (pure)."""
    created = [rt.t_created - rt.t_signal for rt in times.values() if rt.t_created]
    running = [rt.t_running - rt.t_signal for rt in times.values() if rt.t_running]
    by_signal: dict[str, dict[str, Any]] = {}
    for sig in SIGNALS:
        vals = [
            rt.t_running - rt.t_signal for rt in times.values() if rt.signal == sig and rt.t_running
        ]
        by_signal[sig] = {"n": len(vals), "p50_running_s": percentile(vals, 50)}
    recoveries = len(running)
    return {
        "runs": args.runs,
        "nodes": args.nodes,
        "interruptions": interruptions,
        "recoveries_observed": recoveries,
        "signal_to_next_attempt_created_s": _spread(created),
        "signal_to_next_attempt_running_s": _spread(running),
        "by_signal": by_signal,
        "operator_peak_rss_mib": round(peak_rss / 2**20, 1),
        "operator_cpu_seconds": round(cpu, 2),
        "api_writes_during_storm": dict(writes.most_common()),
        "api_writes_per_recovery": round(sum(writes.values()) / recoveries, 2)
        if recoveries
        else None,
        "machine": {"cpus": os.cpu_count()},
    }


def main() -> int:
    args = parse_args()
    rng = random.Random(args.seed)
    api, spec, pv = prepare_cluster(args.nodes)
    bench = Bench(api, start_operator())
    bench.start_threads()
    names = [f"run-{i:03d}" for i in range(args.runs)]
    bench.create_runs(names)
    victims = bench.victims(names, rng)
    t_storm = time.time()
    bench.storm(victims, spec, args.spread_seconds)
    bench.wait_recovered()
    t_end = time.time()
    bench.stop_operator()
    writes = _audit_writes(t_storm, t_end)
    result = summarize(args, bench.times, len(victims), writes, bench.peak_rss, bench.cpu)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    bench.core.delete_namespace(NAMESPACE)
    storage.delete_volume(bench.core, pv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
