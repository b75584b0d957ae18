"""The scale benchmark's cluster side (``operator_scale.py``): its fake spot nodes, its
namespaces and checkpoint volume, its watches, the operator process it measures, and
the cleanup of all of them, on failure too."""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kube_watch
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from process_stats import Sampler
from scale_objects import (
    BENCH_LABEL,
    BENCH_VALUE,
    GROUP,
    NODE_PREFIX,
    NS,
    PEER_NS,
    VERSION,
    ZONES,
    Observer,
    bench_node,
)

from spotrun_dev import cluster_apply, paths, storage
from spotrun_dev.prometheus import free_port

T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


class ScaleCluster:
    """The fleet, the namespaces, the watches and the operator of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.api = kube_watch.api_client(paths.KUBECONFIG)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.obs = Observer()
        self.stop = threading.Event()
        self.sampler = Sampler()
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
        kube_watch.start_watch(
            c.list_namespaced_custom_object,
            (GROUP, VERSION, NS, "trainingruns"),
            self.obs.on_run,
            s,
        )
        kube_watch.start_watch(
            c.list_namespaced_custom_object,
            ("kubeflow.org", "v1", NS, "pytorchjobs"),
            self.obs.on_job,
            s,
        )
        kube_watch.start_watch(self.core.list_namespaced_pod, (NS,), self.obs.on_pod, s)
        kube_watch.start_watch(self._list_nodes, (), self.obs.on_node, s)
        kube_watch.start_watch(
            c.list_namespaced_custom_object,
            ("kubeflow.org", "v1", PEER_NS, "pytorchjobs"),
            self.obs.on_peer_job,
            s,
        )
        kube_watch.start_watch(self.core.list_namespaced_pod, (PEER_NS,), self.obs.on_peer_pod, s)
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
