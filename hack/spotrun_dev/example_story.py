"""An example workload on the real nodes through one interruption, as a user runs it.

Shared by ``make demo EXAMPLE=<name>`` and the real-node e2e test of the examples. The
TrainingRuns are the ones in ``manifests/examples/``, changed only where the local cluster
is not EKS: the checkpoint volume is a claim on a folder every real node mounts (an EFS
stand-in, storage.py) instead of the manifest's storage class, and the pods go to the real
nodes (their harness taint and label). The image is the manifest's own; the real nodes pull
it from the harness's registry (example_images.py). Nothing is played: the example's code
writes its checkpoints and its log, the trainer integration patches ``status.progress``,
the operator counts the interruption, and this module reads what they wrote.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes import client

from spotrun_api import contract
from spotrun_dev import paths, real_interrupt, realnodes, storage
from spotrun_dev.log_follow import LogFollower
from spotrun_dev.node_config import REAL_NODE_LABEL
from spotrun_dev.real_interrupt import RealSignal
from spotrun_dev.real_story import REAL_TOLERATIONS, TR, Story
from spotrun_dev.waiting import ClusterError, wait_for

log = logging.getLogger("spotrun_dev.example_story")

MANIFESTS: Final = paths.REPO_ROOT / "manifests" / "examples"
# The integrations' resume line: "resumed from <dir>/step-<N>".
RESUMED: Final = re.compile(r"resumed from \S*step-(\d+)")
# The trainer core's stop line: "stopped (<why>): step <N> committed ...".
STOPPED: Final = re.compile(r"stopped \([^)]*\): step (\d+) committed")


@dataclass(frozen=True)
class ExamplePlan:
    """How the e2e test and the demo take one example through an interruption."""

    name: str  # the folder under examples/
    manifest: str  # its file in manifests/examples/
    signal: RealSignal  # what happens to the node of its (first) run
    at_step: int  # once every run reported this step
    final: re.Pattern[str]  # the final-metric line of the master's log (group 1: the value)
    metric: str  # what group 1 of ``final`` is
    ends: str = "Succeeded"  # the run's last phase (a budget stop suspends it)
    # Replaces the manifest's --max-steps where its runs would take minutes more here.
    max_steps: int | None = None
    # Replaces the manifest's spec.budget.maxUSD, for the same reason.
    max_usd: float | None = None

    def runs(self) -> list[dict[str, Any]]:
        docs = yaml.safe_load_all((MANIFESTS / self.manifest).read_text())
        return [d for d in docs if d and d.get("kind") == contract.KIND]


PLANS: Final = {
    "resnet50": ExamplePlan(
        "resnet50", "resnet50.yaml", "shutdown", 150,
        re.compile(r"^final top1 ([\d.]+) top5 [\d.]+", re.M), "top-1",
    ),
    "two_tower": ExamplePlan(
        "two_tower", "two-tower.yaml", "nth", 1000,
        re.compile(r"^mean\s+([\d.]+) ±", re.M), "recall@10 (mean of 10 folds)",
    ),
    # Three runs packed on one node: the one NTH drain stops all three. 400 of the
    # manifest's 1000 steps: three trainers share 2 cores here (5 minutes at 1000).
    "mpnet_ablations": ExamplePlan(
        "mpnet_ablations", "mpnet-ablations.yaml", "nth", 150,
        re.compile(r'^result .*"best_ndcg@10": ([\d.]+)', re.M), "best nDCG@10",
        max_steps=400,
    ),
    # Two nodes: the survivor of the lost one leaves at once (peer-lost); the budget ends it.
    # $1.00 of the manifest's $1.47: about 110 s of the gang instead of 180 (the stop comes
    # once the spend plus the next interval and grace, $0.32, would pass it).
    "gpt_pretrain": ExamplePlan(
        "gpt_pretrain", "gpt-pretrain.yaml", "loss", 60,
        re.compile(r"best val loss ([\d.]+)"), "best val loss", ends="Suspended",
        max_usd=1.0,
    ),
}  # fmt: skip


def on_real_nodes(
    run: dict[str, Any],
    claim: str,
    max_steps: int | None = None,
    max_usd: float | None = None,
) -> dict[str, Any]:
    """The manifest's run with the local cluster's volume and node placement (and, where
    given, its --max-steps and spec.budget.maxUSD)."""
    body = copy.deepcopy(run)
    spec = body["spec"]
    if max_usd is not None:
        if "budget" not in spec:
            raise ValueError(f"{run['metadata']['name']}: spec has no budget to replace")
        spec["budget"]["maxUSD"] = max_usd
    if max_steps is not None:
        args = spec["args"]
        if not any(a.startswith("--max-steps=") for a in args):
            raise ValueError(f"{run['metadata']['name']}: spec.args has no --max-steps: {args}")
        spec["args"] = [f"--max-steps={max_steps}" if a.startswith("--max-steps=") else a
                        for a in args]  # fmt: skip
    spec["checkpoint"]["volume"] = {"claimName": claim}
    pod = spec.setdefault("podTemplate", {}).setdefault("spec", {})
    pod.setdefault("nodeSelector", {})[REAL_NODE_LABEL] = "true"
    pod["tolerations"] = [*pod.get("tolerations", []), *(dict(t) for t in REAL_TOLERATIONS)]
    return body


@dataclass
class RunResult:
    """One TrainingRun of the example, from what the trainer and the operator wrote."""

    name: str
    node: str = ""  # where attempt 1 ran
    last_step: int = 0  # the newest step attempt 1 reported before it stopped
    resumed_from: int = -1  # the step attempt 2's trainer loaded (its own log line)
    seconds_to_training: float = 0.0  # signal -> attempt 2 reports a step
    status: dict[str, Any] = field(default_factory=dict)
    metric: float | None = None  # from the final line of the last attempt's log
    log_tail: str = ""

    @property
    def lost_steps(self) -> int:
        return self.last_step - self.resumed_from


class ExampleStory:
    """Creates the example's runs, interrupts their node once, waits for the end."""

    def __init__(self, api: client.ApiClient, namespace: str, plan: ExamplePlan) -> None:
        self.plan = plan
        self.namespace = namespace
        self.story = Story(api, namespace, realnodes.wanted_count())
        names = [r["metadata"]["name"] for r in plan.runs()]
        self.results = {name: RunResult(name) for name in names}
        self.volumes: list[str] = []

    def start(self) -> None:
        core, custom = self.story.core, self.story.custom
        for run in self.plan.runs():
            claim = f"{run['metadata']['name']}-ckpt"
            # A fresh start: a namespace used before (make demo's) keeps its folders.
            shutil.rmtree(storage.host_path(self.namespace, claim), ignore_errors=True)
            self.volumes.append(storage.ensure_checkpoint_claim(core, self.namespace, claim))
            body = on_real_nodes(run, claim, self.plan.max_steps, self.plan.max_usd)
            body["metadata"].pop("namespace", None)
            custom.create_namespaced_custom_object(*TR[:2], self.namespace, TR[2], body)

    def interrupt(self) -> None:
        """``plan.signal`` on the node of the first run's attempt 1, once every run is at
        ``plan.at_step``; returns when every run trains in attempt 2 and a lost instance
        has been replaced."""
        for name in self.results:
            self.story.wait_training(name, 1, self.plan.at_step)
        first = next(iter(self.results))
        node = self.story.gang_nodes(first, 1)[0]
        hit = [n for n in self.results if node in self.story.gang_nodes(n, 1)]
        before = {n: self.story.progress(n) for n in hit}
        # The master's log is followed while it lives: its stop line says which step the
        # stop committed (attempt 1's pods, and logs, go with its PyTorchJob).
        logs = {n: LogFollower(self.story.core, self.namespace, self._master(n, 1)) for n in hit}
        log.info("%s on %s (runs %s)", self.plan.signal, node, hit)
        t0 = time.monotonic()
        if self.plan.signal == "nth":
            self.story.nth_notice(node)
        elif self.plan.signal == "shutdown":  # the kubelet's graceful shutdown, then death
            real_interrupt.interrupt_real(self.story.core, node, self.plan.signal)
        else:
            # A lost instance dies in the background, as on EC2, while the recovery goes on
            # (a spot node is free for the next attempt). Waited for here first, the node
            # lifecycle controller's grace for it (60 s) was in the time to training.
            self.story.dying.start(node)
        for name in hit:
            res = self.results[name]
            res.node, res.last_step = node, int(before[name].get("step", 0))
            if self.plan.signal != "loss":  # a graceful stop: the step its save committed
                stopped = logs[name].search(STOPPED, timeout=120)
                res.last_step = int(stopped[-1]) if stopped else -1
            self.story.wait_training(name, 2, 0)
            res.seconds_to_training = round(time.monotonic() - t0, 1)
            res.resumed_from = self._resumed_from(name, 2)
        if self.plan.signal != "nth":
            # The ASG's replacement, without waiting for the node lifecycle controller's
            # minute on a lost instance (ensure_real_nodes removes its Node itself): the
            # run goes on meanwhile, and a budget may end it.
            self.story.replace_nodes(wait_dying=False)

    def _master(self, run: str, attempt: int) -> str:
        for p in self.story.pods(run, attempt):
            if p.metadata.labels.get("training.kubeflow.org/replica-type") == "master":
                return str(p.metadata.name)
        raise ClusterError(f"attempt {attempt} of {run} has no master pod")

    def _resumed_from(self, run: str, attempt: int, timeout: float = 120) -> int:
        found: list[int] = []

        def logged() -> bool:
            match = RESUMED.search(self.story.master_log(run, attempt))
            found[:] = [int(match.group(1))] if match else []
            return bool(found)

        wait_for(f"attempt {attempt} of {run} to log its resume", logged, timeout=timeout)
        return found[0]

    def finish(self, timeout: float = 900) -> dict[str, RunResult]:
        self.story.replace_nodes(wait_dying=False)  # as in interrupt: the runs go on
        done = ("Succeeded", "Failed", "Suspended")
        for name, res in self.results.items():
            res.status = self.story.wait_status(
                name, "the end", lambda s: s.get("phase") in done, timeout
            )
            text = self.story.master_log(name, int(res.status.get("attempt", 0)))
            res.log_tail = "\n".join(text.splitlines()[-30:])
            match = self.plan.final.search(text)
            res.metric = float(match.group(1)) if match else best_metric(self.claim_folder(name))
        return self.results

    def cleanup(self) -> None:
        for pv in self.volumes:
            storage.delete_volume(self.story.core, pv)

    def claim_folder(self, run: str) -> Path:
        return storage.host_path(self.namespace, f"{run}-ckpt")


def best_metric(folder: Path) -> float | None:
    """The metric of the committed best checkpoint (``best/step-N``), when the last
    attempt's log went with its pods (a budget stop deletes them)."""
    markers = sorted((folder / "best").glob(f"*/{contract.COMMIT_MARKER}"))
    for marker in markers[-1:]:
        value = json.loads(marker.read_text()).get("metric")
        return None if value is None else float(value)
    return None


def describe(plan: ExamplePlan, results: dict[str, RunResult]) -> str:
    """The story's table: one row per run."""
    rows = [("run", "signal", "node", "last step", "resumed from", "steps lost",
             "to training", "phase", "attempt", "preempt.", "failures", plan.metric)]  # fmt: skip
    for r in results.values():
        s = r.status
        metric = "-" if r.metric is None else f"{r.metric:.4f}"
        rows.append((r.name, plan.signal if r.node else "-", r.node or "-", str(r.last_step),
                     f"step-{r.resumed_from}", str(r.lost_steps), f"{r.seconds_to_training}s",
                     str(s.get("phase")), str(s.get("attempt")), str(s.get("preemptions")),
                     str(s.get("failures")), metric))  # fmt: skip
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def plan_of(name: str) -> ExamplePlan:
    if name not in PLANS:
        raise ClusterError(f"no example {name!r}; one of {', '.join(sorted(PLANS))}")
    return PLANS[name]
