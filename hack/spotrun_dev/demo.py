"""``make demo``: a TrainingRun surviving spot interruptions on the local cluster.

Applies the quickstart TrainingRun, runs the spotrun operator, and while
``kubectl get tr -w`` prints every change, reclaims nodes of the gang the way the AWS Node
Termination Handler, Karpenter, a vanished instance and a kubelet graceful shutdown do. Pods
on kwok nodes do not execute, so the demo also plays the trainer's part of the contract: it
reports progress and checkpoints in ``status.progress`` exactly as the trainer does, and
finally completes the pods. It ends with a summary read back from the run's status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from spotrun_dev import cluster, inject, paths, storage, traces
from spotrun_trainer.contract import GROUP, PLURAL, VERSION, Progress

NAMESPACE = "spotrun-demo"
RUN = "quickstart"
EXAMPLE = paths.REPO_ROOT / "manifests" / "examples" / "quickstart.yaml"
CRD = paths.REPO_ROOT / "crds" / "trainingruns.spotrun.dev.yaml"
OPERATOR_LOG = paths.CLUSTER_DIR / "demo-operator.log"
SCENARIO: tuple[traces.Signal, ...] = ("nth", "rebalance", "karpenter", "loss", "shutdown")


def say(msg: str) -> None:
    print(f"\n\033[1m==> {msg}\033[0m", flush=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Demo:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.api = api
        self.step = 0
        self.checkpoint_time = ""

    # --- the run and its gang -------------------------------------------------------
    def run(self) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, RUN)
        )

    def gang(self, attempt: int) -> list[client.V1Pod]:
        sel = f"training.kubeflow.org/job-name={RUN}-a{attempt}"
        return list(self.core.list_namespaced_pod(NAMESPACE, label_selector=sel).items)

    def wait_gang_running(self, attempt: int, timeout: float = 180) -> list[client.V1Pod]:
        found: list[client.V1Pod] = []

        def running() -> bool:
            pods = [p for p in self.gang(attempt) if not p.metadata.deletion_timestamp]
            found[:] = pods
            return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

        cluster.wait_for(f"attempt {attempt} to run", running, timeout=timeout)
        return found

    def attempt(self) -> int:
        return int((self.run().get("status") or {}).get("attempt") or 0)

    # --- the trainer's side of the contract ---------------------------------------
    def train(self, attempt: int, steps: int) -> None:
        """Report progress as rank 0 does: a checkpoint commits, then steps go on past it
        (the work a preemption would lose)."""
        self.step += steps
        self._report(attempt, checkpoint_step=self.step)
        time.sleep(2)  # training continues past the checkpoint for a while
        self._report(attempt, checkpoint_step=self.step, step=self.step + steps // 10)

    def _report(self, attempt: int, checkpoint_step: int, step: int | None = None) -> None:
        if step is None:
            self.checkpoint_time = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        progress = Progress(
            step=step or checkpoint_step,
            checkpoint_step=checkpoint_step,
            checkpoint_time=self.checkpoint_time,
            checkpoint_path=f"/checkpoints/step-{checkpoint_step}",
            samples_per_second=2048.0,
            attempt=attempt,
        )
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, RUN, {"status": {"progress": progress.to_status()}}
        )


def _setup_namespace(core: client.CoreV1Api) -> None:
    cluster.fresh_namespace(core, NAMESPACE)
    storage.ensure_checkpoint_claim(core, NAMESPACE, "checkpoints")


def _training_run() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    run = next(d for d in docs if d["kind"] == "TrainingRun")
    run["metadata"]["namespace"] = NAMESPACE
    run["spec"]["checkpoint"]["volume"] = {"claimName": "checkpoints"}
    return dict(run)


def _start_operator() -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "spotrun-operator"
    OPERATOR_LOG.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(exe),
            "--namespace",
            NAMESPACE,
            "--metrics-port=0",
            "--pricing=table",
            "--backoff-base-seconds=2",
            "--failure-settle-seconds=1",
        ],
        env={**os.environ, "KUBECONFIG": str(paths.KUBECONFIG), "PYTHONUNBUFFERED": "1"},
        stdout=OPERATOR_LOG.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _watch_table() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(paths.binary("kubectl")),
            "--kubeconfig",
            str(paths.KUBECONFIG),
            "get",
            "tr",
            "-n",
            NAMESPACE,
            "-w",
        ],
    )


def summary(run: dict[str, Any], recoveries: dict[int, tuple[str, float]]) -> str:
    """One line per attempt from ``status.attempts``, with the recovery time the demo
    measured from the signal to the next attempt's gang Running."""
    st = run.get("status") or {}
    rows = [
        f"{'attempt':>7}  {'outcome':<11} {'reason':<22} {'node':<11} {'lost work':>9}  "
        "signal -> next gang Running"
    ]
    for e in sorted(st.get("attempts") or [], key=lambda e: int(e["attempt"])):
        n = int(e["attempt"])
        lost = e.get("lostWorkSeconds")
        rec = recoveries.get(n)
        rows.append(
            f"{n:>7}  {e.get('outcome', 'Running'):<11} {e.get('reason', ''):<22} "
            f"{e.get('node', ''):<11} {'' if lost is None else f'{lost:.0f}s':>9}  "
            + (f"{rec[1]:.1f}s ({rec[0]})" if rec else "")
        )
    cost = st.get("cost") or {}
    rows += [
        "",
        f"phase {st.get('phase')}: {st.get('attempt')} attempts, {st.get('preemptions')} "
        f"preemptions, {st.get('failures')} failures (the failure budget is untouched)",
        f"cost ${cost.get('totalUSD')} for {cost.get('gpuHours')} GPU-hours; on demand "
        f"${cost.get('onDemandEquivalentUSD')}: {cost.get('savingsPercent')}% saved",
    ]
    return "\n".join(rows)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    say(
        "Bringing the local cluster up (kube-apiserver, scheduler, controller-manager, "
        "training operator, fake spot p4d fleet)"
    )
    c = cluster.ensure_cluster()
    api = c.api_client()
    core = client.CoreV1Api(api)
    subprocess.run(
        [
            str(paths.binary("kubectl")),
            "--kubeconfig",
            str(c.kubeconfig),
            "get",
            "nodes",
            "-L",
            "eks.amazonaws.com/capacityType,topology.kubernetes.io/zone",
        ],
        check=True,
    )
    cluster._apply(api, [yaml.safe_load(CRD.read_text())])
    _setup_namespace(core)
    operator = _start_operator()
    watcher = _watch_table()
    demo = Demo(api)
    recoveries: dict[int, tuple[str, float]] = {}
    try:
        say(f"kubectl apply -f {EXAMPLE.relative_to(paths.REPO_ROOT)} (namespace {NAMESPACE})")
        demo.custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, _training_run()
        )
        attempt = 1
        pods = demo.wait_gang_running(attempt)
        for signal in SCENARIO:
            demo.train(attempt, steps=400)
            victim = next(
                p
                for p in pods
                if p.metadata.labels["training.kubeflow.org/replica-type"] == "worker"
            ).spec.node_name
            say(f"spotrun-dev interrupt {victim} --signal {signal}")
            t0 = time.monotonic()
            inject.interrupt(core, victim, signal)
            if signal == "rebalance":
                say(
                    "a rebalance recommendation is advice, not a notice: the gang keeps "
                    "running (spotrun avoids the node on the next restart)"
                )
                time.sleep(3)  # let the operator see the taint; the watch shows no change
                assert demo.attempt() == attempt, "rebalance must not restart the gang"
                continue
            attempt += 1
            pods = demo.wait_gang_running(attempt)
            recoveries[attempt - 1] = (signal, time.monotonic() - t0)
            say(
                f"attempt {attempt} running {time.monotonic() - t0:.1f}s after the {signal} "
                "signal, resuming from the newest checkpoint"
            )
        demo.train(attempt, steps=400)
        say("training finishes: every rank exits 0")
        for p in pods:
            inject.complete_pod(core, NAMESPACE, p.metadata.name)
        cluster.wait_for(
            "the run to succeed",
            lambda: (demo.run().get("status") or {}).get("phase") == "Succeeded",
            timeout=120,
        )
        time.sleep(1)  # let the last watch line print before the summary
    finally:
        watcher.terminate()
        operator.terminate()
        operator.wait(30)
    say("Summary")
    print(summary(demo.run(), recoveries))
    print(
        f"\nkubectl --kubeconfig {c.kubeconfig} describe tr {RUN} -n {NAMESPACE}"
        f"   # the timeline\noperator log: {OPERATOR_LOG}"
    )
    cluster.ensure_fleet(core)  # give the reclaimed nodes back for the next run
    return 0


if __name__ == "__main__":
    sys.exit(main())
