"""The scale benchmark's peers (``operator_scale.py``): (a) the Kubeflow training operator
alone, PyTorchJobs whose node is interrupted as spotrun's are; (b) a bare ``kubectl
create`` loop of as many PyTorchJobs as there were recoveries, the API floor."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import recovery_phases as rp
import yaml
from scale_cluster import say
from scale_objects import PEER_NS, SIGNALS, PeerJob, pytorchjob
from scale_report import peer_table, per_second, steady_per_second
from scale_storm import Bench

from spotrun_dev import paths

KUBECTL = paths.binary("kubectl")


# 4. peer (a): the training operator's own restarts
def create_peer_jobs(bench: Bench) -> list[str]:
    names = []
    for i in range(bench.args.peer_jobs):
        policy = "OnFailure" if i % 2 == 0 else "ExitCode"
        name = f"peer-{i:03d}"
        with bench.obs.lock:
            bench.obs.peers[name] = PeerJob(name=name, size=1, policy=policy)
        bench.custom.create_namespaced_custom_object(
            "kubeflow.org", "v1", PEER_NS, "pytorchjobs", pytorchjob(name, 1, policy, 8)
        )
        names.append(name)
    return names


def peer_storm(bench: Bench, names: list[str]) -> None:
    def running() -> bool:
        with bench.obs.lock:
            return all(bench.obs.peers[n].t_running is not None for n in names)

    bench.wait("every peer job Running", running)
    victims = []
    with bench.obs.lock:
        for i, n in enumerate(names):
            peer = bench.obs.peers[n]
            peer.old_uids = {uid for uid, _ in peer.pods.values()}
            nodes = [
                p.spec.node_name
                for p in bench.core.list_namespaced_pod(
                    PEER_NS, label_selector=f"{rp.JOB_LABEL}={n}"
                ).items
                if p.spec.node_name
            ]
            if nodes:
                victims.append((n, nodes[0], SIGNALS[i % len(SIGNALS)]))
    gap = bench.args.spread_seconds / max(1, bench.args.interruptions)
    workers = []
    for n, node, sig in victims:
        with bench.obs.lock:
            peer = bench.obs.peers[n]
            peer.signal = sig
        th = threading.Thread(
            target=bench.interrupt, args=(node, sig, bench.stamp(peer)), daemon=True
        )
        th.start()
        workers.append(th)
        time.sleep(gap)  # same pacing as the spotrun storm
    for th in workers:
        th.join(bench.args.timeout)

    def recovered() -> bool:
        with bench.obs.lock:
            return all(
                (p.t_running or 0) > (p.t_signal or 0)
                for p in bench.obs.peers.values()
                if p.t_signal
            )

    bench.wait("every peer job's replacement pod Running", recovered, timeout=300)


# 5. peer (b): a bare kubectl create loop
def floor_loop(bench: Bench, sizes: list[int]) -> tuple[float, float, list[PeerJob]]:
    jobs = [PeerJob(name=f"floor-{i:04d}", size=s) for i, s in enumerate(sizes)]
    with bench.obs.lock:
        for j in jobs:
            bench.obs.peers[j.name] = j
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
        with bench.obs.lock:
            return all(j.t_running is not None for j in jobs)

    bench.wait("every floor job Running", running)
    return t0, t_loop, jobs


def peers_step(bench: Bench, peers: list[str], sizes: list[int]) -> dict[str, Any]:
    """Peer (a) and peer (b)."""
    out: dict[str, Any] = {}
    say("peer (a): interrupting the plain PyTorchJobs")
    peer_storm(bench, peers)
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
    t0, t_loop, jobs = floor_loop(bench, sizes)
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
