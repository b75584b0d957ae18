"""The real story, shared by ``make demo`` and the real-node e2e test.

A 2-node TrainingRun of the real trainer image, run by the chart's operator pod on real
nodes, lives through an NTH spot interruption, a network partition (real_partition), an
application crash and a graceful node shutdown, and must end with weights bitwise equal to
a reference run of the same image and world size that nothing interrupted. Nothing is
played: the trainer writes ``status.progress`` and its checkpoints, the kubelets deliver
SIGTERM and SIGKILL, the node lifecycle controller marks dead nodes. This module only
injects (as NTH, EC2 and logind do) and observes; the test asserts on what it observed.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from spotrun_api import contract
from spotrun_dev import real_interrupt, real_partition, realnodes, storage
from spotrun_dev.node_config import GPU_TAINT_KEY, REAL_NODE_LABEL
from spotrun_dev.pod_exits import PodExits, pods_where
from spotrun_dev.waiting import ClusterError, wait_for
from spotrun_dev.weights import differing_weights, final_weights

log = logging.getLogger("spotrun_dev.real_story")

TR = (contract.GROUP, contract.VERSION, contract.PLURAL)
REAL_TOLERATIONS = [
    {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
    {"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"},
]
# About 4 steps a second (the step delay); each interruption comes a number of steps after
# the attempt resumed, so harness waits (a node going NotReady takes a minute) never decide
# where in the run it lands.
MAX_STEPS = 300
# In attempt 3, which resumes below real_partition.HOLD_AT (the partition holds attempt 2's
# first save at or after it).
CRASH_AT = 200
CRASH_ATTEMPT = 3
TRAINER_ARGS = (
    f"--max-steps={MAX_STEPS}",
    "--batch-size=8",
    "--model.n-layer=2",
    "--model.n-embd=32",
    "--model.seq-len=16",
    "--data.num-samples=512",
    "--report.log-every=10",
    "--report.progress-interval-seconds=0.5",  # so the last step before a loss is known
    "--fault.step-delay-seconds=0.2",
)
# The reference run is not interrupted, so nothing waits on where its steps are: without
# the step delay it takes seconds instead of 80 s of sleeping. The delay is a sleep after
# each optimizer step; it changes no number the final weights are made of.
REFERENCE_ARGS = tuple(a for a in TRAINER_ARGS if not a.startswith("--fault.step-delay"))
CRASH_ARGS = (f"--fault.crash-at-step={CRASH_AT}", f"--fault.crash-in-attempt={CRASH_ATTEMPT}")
# (attempt, signal, steps to train in that attempt before the signal; the partition comes
# when rank 0 holds its commit, real_partition.HOLD_AT). The crash comes between the last
# two.
PLAN: tuple[tuple[int, str, int], ...] = (
    (1, "nth", 40),
    (2, "partition", 0),
    (4, "shutdown", 20),
)
CHECKPOINT_MOUNT = "/checkpoints"  # spec.checkpoint.path's default
# The trainer's resume line: "resumed from <path> (step N, written by R ranks) in Ts".
RESUMED = re.compile(r"resumed from .*\(step (\d+)[,)]")
# What the operator records for each. A lost instance is named by the surviving rank: its
# heartbeat sees the peer vanish (exit 86, peer-lost) long before the node lifecycle
# controller marks the node Unknown (docs/trainer.md, "Lost peers").
SIGNAL_OF = {
    "nth": "spot-interruption",
    "loss": "peer-lost",
    "partition": "peer-lost",
    "shutdown": "node-shutdown",
}


def trainer_run(
    name: str,
    image: str,
    claim: str,
    args: tuple[str, ...],
    interval: str = "3s",
    env: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A 2-node TrainingRun of the real trainer image on the real nodes (one rank a pod)."""
    return {
        "apiVersion": f"{contract.GROUP}/{contract.VERSION}",
        "kind": contract.KIND,
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "command": ["python", "-m", "spotrun_lm", *args],
            "nodes": 2,
            "gpusPerNode": 8,
            "procsPerNode": 1,
            "checkpoint": {"volume": {"claimName": claim}, "interval": interval, "keep": 100},
            "maxFailures": 3,
            "terminationGracePeriodSeconds": 60,
            "podTemplate": {
                "spec": {
                    "nodeSelector": {REAL_NODE_LABEL: "true"},
                    "tolerations": [dict(t) for t in REAL_TOLERATIONS],
                    "containers": [
                        {"name": "pytorch", "imagePullPolicy": "Never", "env": env or []}
                    ],
                }
            },
        },
    }


@dataclass
class Interruption:
    """One interruption as the trainer and the kubelet saw it."""

    signal: str
    attempt: int
    node: str
    last_step: int  # the newest step the trainer reported before it stopped
    resumed_from: int  # the checkpoint step the next attempt's trainer loaded
    seconds_to_training: float  # signal -> the next attempt reports a step of its own
    save_seconds: float | None  # signal -> the checkpoint the stopped gang committed
    recorded_signal: str = ""  # what the operator wrote in lastPreemption

    @property
    def lost_steps(self) -> int:
        return self.last_step - self.resumed_from


@dataclass(frozen=True)
class PartitionSeen:
    """What the partition showed: the step rank 0 held, the next attempt's fence, and the
    cut-off rank's own log line refusing its commit."""

    held_step: int
    fence: contract.Fence
    refused_line: str


def is_master(pod: client.V1Pod) -> bool:
    return bool(pod.metadata.labels.get("training.kubeflow.org/replica-type") == "master")


class Story:
    """Drives the two runs; every wait has a deadline."""

    def __init__(self, api: client.ApiClient, namespace: str, real_nodes: int) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.real_nodes = real_nodes
        self.exits = PodExits(self.core, namespace)
        self.interruptions: list[Interruption] = []
        self.losses: list[tuple[int, int, float]] = []  # (attempt, step, loss) from logs
        self.dying = real_interrupt.DyingInstances(self.core)
        self._resumed: dict[tuple[str, int], int] = {}
        self.partitioned: PartitionSeen | None = None

    # --- reading what the trainer and the operator wrote ------------------------------
    def status(self, run: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(*TR[:2], self.namespace, TR[2], run)
        return dict(obj.get("status") or {})

    def progress(self, run: str) -> dict[str, Any]:
        return dict(self.status(run).get("progress") or {})

    def wait_status(
        self, run: str, what: str, pred: Any, timeout: float, interval: float = 1
    ) -> dict[str, Any]:
        """The run's status once ``pred`` holds; at the deadline, an error with the last
        status and where the run's pods are (CI shows the first lines of a failure)."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [self.status(run)]
            return bool(pred(found[0]))

        try:
            wait_for(f"{run}: {what}", check, timeout=timeout, interval=interval)
        except ClusterError as exc:
            last = found[0] if found else None
            where = pods_where(self.core, self.namespace, f"spotrun.dev/run={run}")
            raise ClusterError(f"{exc}; pods: {where}; last status: {last}") from None
        return found[0]

    def pods(self, run: str, attempt: int) -> list[client.V1Pod]:
        sel = f"spotrun.dev/run={run},spotrun.dev/attempt={attempt}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=sel).items)

    def master_log(self, run: str, attempt: int) -> str:
        for p in self.pods(run, attempt):
            if is_master(p):
                return str(self.core.read_namespaced_pod_log(p.metadata.name, self.namespace))
        return ""

    def collect_losses(self, run: str, attempt: int) -> None:
        """The training loss the master logged in this attempt (its own log lines)."""
        for line in self.master_log(run, attempt).splitlines():
            if " step " in line and ": loss " in line:
                step = int(line.split(" step ", 1)[1].split(":", 1)[0])
                loss = float(line.split(": loss ", 1)[1].split(",", 1)[0])
                self.losses.append((attempt, step, loss))

    def resumed_from(self, run: str, attempt: int) -> int:
        """The step the attempt's trainer loaded, from its log while it lives (remembered:
        the log goes with the pod)."""
        if (run, attempt) in self._resumed:
            return self._resumed[(run, attempt)]
        for line in self.master_log(run, attempt).splitlines():
            found = RESUMED.search(line)
            if found:
                step = int(found.group(1))
                self._resumed[(run, attempt)] = step
                return step
        raise ClusterError(f"attempt {attempt} of {run} did not resume from a checkpoint")

    def wait_training(self, run: str, attempt: int, min_step: int) -> dict[str, Any]:
        def at_step(st: dict[str, Any]) -> bool:
            p = st.get("progress") or {}
            return p.get("attempt") == attempt and int(p.get("step", -1)) >= min_step

        what = f"attempt {attempt} at step {min_step}"
        return dict(self.wait_status(run, what, at_step, 420, interval=0.5)["progress"])

    def gang_nodes(self, run: str, attempt: int) -> list[str]:
        return sorted({p.spec.node_name for p in self.pods(run, attempt) if p.spec.node_name})

    # --- the story --------------------------------------------------------------------
    def create(
        self,
        name: str,
        image: str,
        claim: str,
        args: tuple[str, ...],
        env: list[dict[str, str]] | None = None,
    ) -> None:
        body = trainer_run(name, image, claim, args, env=env)
        self.custom.create_namespaced_custom_object(*TR[:2], self.namespace, TR[2], body)

    def reference(self, image: str, timeout: float = 900) -> dict[str, Any]:
        """The uninterrupted reference run, first (each pod takes a whole node)."""
        self.exits.start()
        self.create("ref", image, "ckpt-ref", REFERENCE_ARGS)
        done = ("Succeeded", "Failed")
        return self.wait_status("ref", "the end", lambda s: s.get("phase") in done, timeout)

    def start(self, image: str) -> None:
        env = real_partition.trainer_env(CHECKPOINT_MOUNT)
        self.create("run", image, "ckpt", TRAINER_ARGS + CRASH_ARGS, env)

    def interrupt(self, attempt: int, signal: str, steps: int) -> Interruption:
        """``signal`` on one node of ``attempt``'s gang once it trained ``steps`` steps
        after resuming; returns what the trainer and the operator then did."""
        # The group is whole before the signal: an earlier lost instance's replacement
        # joins while this attempt trains (its Node is removed without waiting for the
        # node lifecycle controller's minute). A partition's next attempt needs two nodes
        # besides the one cut off.
        self.replace_nodes(wait_dying=False)
        if signal == "partition":
            return self.partition(attempt)
        base = self.resumed_from("run", attempt) if attempt > 1 else 0
        self.wait_training("run", attempt, base + steps)
        self.collect_losses("run", attempt)
        node = self.gang_nodes("run", attempt)[0]
        log.info("attempt %d: %s on %s", attempt, signal, node)
        t0, wall0 = time.monotonic(), dt.datetime.now(dt.UTC)
        if signal == "nth":
            self.nth_notice(node)
        else:  # the instance dies in the background, as on EC2, while the recovery goes on
            before = self.progress("run")  # what the trainer reported before it vanished
            if signal == "shutdown":
                realnodes.power_off(node)
            self.dying.start(node)
        last = before if signal == "loss" else self.progress("run")
        st = self.wait_status(
            "run", f"preemption {len(self.interruptions) + 1}",
            lambda s: int(s.get("preemptions", 0)) > len(self.interruptions), timeout=300,
        )  # fmt: skip
        record = Interruption(
            signal=signal,
            attempt=attempt,
            node=node,
            last_step=int(last.get("step", 0)),
            resumed_from=0,
            seconds_to_training=self.next_training(attempt + 1, t0),
            save_seconds=_seconds_after(wall0, last) if signal != "loss" else None,
            recorded_signal=str((st.get("lastPreemption") or {}).get("signal", "")),
        )
        record.resumed_from = self.resumed_from("run", attempt + 1)
        self.interruptions.append(record)
        return record

    def partition(self, attempt: int) -> Interruption:
        """Cut the master's node off while rank 0 holds a commit (real_partition); the
        next attempt starts on other nodes, and the cut-off rank's commit, released after
        the next attempt's fence, is refused. The instance is then terminated."""
        folder = storage.host_path(self.namespace, "ckpt")
        held = real_partition.wait_held(folder)
        master = next(p for p in self.pods("run", attempt) if is_master(p))
        node, pod = str(master.spec.node_name), str(master.metadata.name)
        self.collect_losses("run", attempt)
        before = self.progress("run")
        log.info("attempt %d: partition of %s (rank 0 holds step %d)", attempt, node, held)
        t0 = time.monotonic()
        real_partition.cut(node)
        st = self.wait_status(
            "run", "the partition's preemption",
            lambda s: int(s.get("preemptions", 0)) > len(self.interruptions), timeout=300,
        )  # fmt: skip
        fence = real_partition.wait_fence(folder, attempt + 1)
        real_partition.release(folder)
        refused = real_partition.wait_log(node, self.namespace, pod, r"refused: fenced by")
        record = Interruption(
            signal="partition",
            attempt=attempt,
            node=node,
            last_step=int(before.get("step", 0)),
            resumed_from=0,
            seconds_to_training=self.next_training(attempt + 1, t0),
            save_seconds=None,
            recorded_signal=str((st.get("lastPreemption") or {}).get("signal", "")),
        )
        record.resumed_from = self.resumed_from("run", attempt + 1)
        self.partitioned = PartitionSeen(held, fence, refused)
        # The cut-off instance is terminated; its replacement joins before the next signal.
        self.dying.start(node)
        self.interruptions.append(record)
        return record

    def nth_notice(self, node: str) -> None:
        """NTH drains ``node`` on its spot interruption notice; the instance dies at the end
        of the notice while the story goes on (:meth:`replace_nodes` waits for it)."""
        real_interrupt.nth_drain(self.core, node)
        self.dying.start(node)

    def replace_nodes(self, wait_dying: bool = True) -> None:
        """The ASG replaces every dead node; with ``wait_dying``, once the node lifecycle
        controller has seen each dying instance NotReady and its Node was deleted."""
        if wait_dying:
            self.dying.wait()
        else:
            self.dying.leave()
        realnodes.ensure_real_nodes(self.core, self.real_nodes)

    def next_training(self, attempt: int, t0: float) -> float:
        def trained(st: dict[str, Any]) -> bool:
            p = st.get("progress") or {}
            return p.get("attempt") == attempt and p.get("samplesPerSecond") is not None

        self.wait_status("run", f"attempt {attempt} to train", trained, 420, interval=0.5)
        return round(time.monotonic() - t0, 1)

    def crash(self) -> dict[str, Any]:
        """Attempt CRASH_ATTEMPT's trainer exits 1 at CRASH_AT: a failure, not a
        preemption."""
        self.wait_training("run", CRASH_ATTEMPT, CRASH_AT - 15)
        self.collect_losses("run", CRASH_ATTEMPT)  # its log goes with its pods
        st = self.wait_status(
            "run", "the crash to count as a failure",
            lambda s: int(s.get("failures", 0)) >= 1, timeout=600,
        )  # fmt: skip
        self.next_training(CRASH_ATTEMPT + 1, time.monotonic())
        self.resumed_from("run", CRASH_ATTEMPT + 1)
        return st

    def finish(self, timeout: float = 900) -> dict[str, Any]:
        self.replace_nodes()
        done = ("Succeeded", "Failed")
        run = self.wait_status("run", "the end", lambda s: s.get("phase") in done, timeout)
        self.collect_losses("run", int(run.get("attempt", 0)))
        self.exits.stop()
        return run


def _seconds_after(signal: dt.datetime, progress: dict[str, Any]) -> float | None:
    """Signal -> the commit of the checkpoint the stopped trainer reported (its own
    checkpointTime): the save inside the notice, SIGTERM delivery included."""
    stamp = progress.get("checkpointTime")
    if not stamp:
        return None
    committed = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return round((committed - signal).total_seconds(), 1)


__all__ = [
    "Interruption",
    "PartitionSeen",
    "Story",
    "differing_weights",
    "final_weights",
    "is_master",
]
