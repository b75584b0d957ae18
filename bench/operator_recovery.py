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

import yaml
from kubernetes import client, watch

from spotrun_dev import cluster, fleet, inject, paths, storage, traces

RESULTS = paths.REPO_ROOT / "bench" / "results" / "operator_recovery.json"
NAMESPACE = "spotrun-bench"
SIGNALS: tuple[traces.Signal, ...] = ("nth", "karpenter", "asg", "loss", "shutdown")
# The operator's own client and kopf's watch/event client.
OPERATOR_AGENTS = ("spotrun-operator/", "kopf/")


@dataclass
class RunTimes:
    signal: str = ""
    t_signal: float = 0.0
    t_created: float | None = None
    t_running: float | None = None
    pods: dict[str, bool] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[k], 3)


def _proc_stats(pid: int) -> tuple[int, float]:
    """Peak RSS (bytes, VmHWM) and CPU seconds (user+system) of a live process."""
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return hwm, cpu


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
    counts: Counter[str] = Counter()
    if not paths.AUDIT_LOG.exists():
        return counts
    import datetime as dt

    for line in paths.AUDIT_LOG.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not ev.get("userAgent", "").startswith(OPERATOR_AGENTS):
            continue
        if ev.get("verb") not in ("create", "update", "patch", "delete", "deletecollection"):
            continue
        stamp = ev.get("requestReceivedTimestamp", "")
        t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        if since <= t <= until:
            res = ev.get("objectRef", {})
            sub = f"/{res['subresource']}" if res.get("subresource") else ""
            counts[f"{ev['verb']} {res.get('resource', '?')}{sub}"] += 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=120)
    ap.add_argument("--spread-seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    c = cluster.ensure_cluster(with_fleet=False)
    api = c.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    spec = fleet.FleetSpec(spot_nodes=args.nodes, on_demand_nodes=0)
    print(f"fleet: {args.nodes} spot nodes", flush=True)
    cluster.ensure_fleet(core, spec)
    crd = yaml.safe_load((paths.REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml").read_text())
    cluster._apply(api, [crd])
    cluster.fresh_namespace(core, NAMESPACE)
    pv = storage.ensure_checkpoint_claim(core, NAMESPACE)

    log = (paths.CLUSTER_DIR / "bench-operator.log").open("w")
    op = subprocess.Popen(
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
    peak_rss, cpu = 0, 0.0
    times: dict[str, RunTimes] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def sample() -> None:
        nonlocal peak_rss, cpu
        while not stop.is_set() and op.poll() is None:
            rss, c_s = _proc_stats(op.pid)
            peak_rss, cpu = max(peak_rss, rss), c_s
            stop.wait(0.5)

    def watch_jobs() -> None:
        w = watch.Watch()
        for ev in w.stream(
            custom.list_namespaced_custom_object,
            "kubeflow.org",
            "v1",
            NAMESPACE,
            "pytorchjobs",
            timeout_seconds=900,
        ):
            if stop.is_set():
                w.stop()
                break
            name = ev["object"]["metadata"]["name"]
            run, _, attempt = name.rpartition("-a")
            with lock:
                rt = times.get(run)
                if (
                    ev["type"] == "ADDED"
                    and rt
                    and rt.t_signal
                    and attempt == "2"
                    and rt.t_created is None
                ):
                    rt.t_created = time.time()

    def watch_pods() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=900):
            if stop.is_set():
                w.stop()
                break
            pod = ev["object"]
            job = (pod.metadata.labels or {}).get("training.kubeflow.org/job-name", "")
            run, _, attempt = job.rpartition("-a")
            with lock:
                rt = times.get(run)
                if not rt or attempt != "2" or rt.t_running is not None:
                    continue
                rt.pods[pod.metadata.name] = (
                    pod.status.phase == "Running" and ev["type"] != "DELETED"
                )
                if len(rt.pods) == 2 and all(rt.pods.values()):
                    rt.t_running = time.time()

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, watch_jobs, watch_pods)]
    for t in threads:
        t.start()

    names = [f"run-{i:03d}" for i in range(args.runs)]
    t0 = time.time()
    for n in names:
        times[n] = RunTimes()
        custom.create_namespaced_custom_object(
            "spotrun.dev", "v1alpha1", NAMESPACE, "trainingruns", _run_manifest(n)
        )

    def all_running() -> bool:
        pods = core.list_namespaced_pod(NAMESPACE).items
        running = [
            p
            for p in pods
            if p.status.phase == "Running"
            and p.metadata.labels.get("training.kubeflow.org/job-name", "").endswith("-a1")
        ]
        return bool(len(running) == 2 * args.runs)

    cluster.wait_for("every first attempt Running", all_running, timeout=600, interval=2)
    print(f"{args.runs} runs Running after {time.time() - t0:.1f}s", flush=True)

    # One node per run, so every run sees exactly one interruption.
    victims: list[tuple[str, str]] = []
    for n in names:
        pods = [
            p
            for p in core.list_namespaced_pod(
                NAMESPACE, label_selector=f"training.kubeflow.org/job-name={n}-a1"
            ).items
        ]
        victims.append((n, rng.choice(pods).spec.node_name))
    gap = args.spread_seconds / max(1, len(victims))
    workers: list[threading.Thread] = []
    t_storm = time.time()
    for i, (run, node) in enumerate(victims):
        sig = SIGNALS[i % len(SIGNALS)]

        def hit(run: str = run, node: str = node, sig: traces.Signal = sig, i: int = i) -> None:
            with lock:
                times[run].signal, times[run].t_signal = sig, time.time()
            inject.interrupt(core, node, sig, drain_timeout=300)
            # The ASG replaces the reclaimed instance with a fresh node.
            zone = spec.zones[i % len(spec.zones)]
            core.create_node(fleet.build_node(f"spot-p4d-r{i}", "spot", zone, spec.region))

        th = threading.Thread(target=hit, daemon=True)
        th.start()
        workers.append(th)
        time.sleep(gap)  # the storm's pacing, not a wait for a condition
    for th in workers:
        th.join(600)

    def recovered() -> bool:
        with lock:
            return all(rt.t_running is not None for rt in times.values())

    try:
        cluster.wait_for("every run's attempt 2 Running", recovered, timeout=600, interval=2)
    except cluster.ClusterError as exc:
        print(f"warning: {exc}", flush=True)
    t_end = time.time()
    stop.set()
    rss, cpu_now = _proc_stats(op.pid) if op.poll() is None else (peak_rss, cpu)
    peak_rss, cpu = max(peak_rss, rss), max(cpu, cpu_now)
    op.terminate()
    op.wait(30)

    created = [rt.t_created - rt.t_signal for rt in times.values() if rt.t_created]
    running = [rt.t_running - rt.t_signal for rt in times.values() if rt.t_running]
    by_signal: dict[str, dict[str, Any]] = {}
    for sig in SIGNALS:
        vals = [
            rt.t_running - rt.t_signal for rt in times.values() if rt.signal == sig and rt.t_running
        ]
        by_signal[sig] = {"n": len(vals), "p50_running_s": _percentile(vals, 50)}
    writes = _audit_writes(t_storm, t_end)
    recoveries = len(running)
    result = {
        "runs": args.runs,
        "nodes": args.nodes,
        "interruptions": len(victims),
        "recoveries_observed": recoveries,
        "signal_to_next_attempt_created_s": {
            "p50": _percentile(created, 50),
            "p99": _percentile(created, 99),
            "mean": round(statistics.mean(created), 3) if created else None,
        },
        "signal_to_next_attempt_running_s": {
            "p50": _percentile(running, 50),
            "p99": _percentile(running, 99),
            "mean": round(statistics.mean(running), 3) if running else None,
        },
        "by_signal": by_signal,
        "operator_peak_rss_mib": round(peak_rss / 2**20, 1),
        "operator_cpu_seconds": round(cpu, 2),
        "api_writes_during_storm": dict(writes.most_common()),
        "api_writes_per_recovery": round(sum(writes.values()) / recoveries, 2)
        if recoveries
        else None,
        "machine": {"cpus": os.cpu_count()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    core.delete_namespace(NAMESPACE)
    storage.delete_volume(core, pv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
